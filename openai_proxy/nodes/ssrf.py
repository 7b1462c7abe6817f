"""The SSRF filter for node URLs the Oracle hands us (static NODE_URLS are the operator's and skip it).

Anyone who can register with the Oracle chooses the URL this gateway will call, so an Oracle URL must point
at a public node, never at the gateway's own host, its cloud metadata service or (unless allowed) its private
network. The host is judged by the address a connection would really reach:

* IP literals, including bracketed IPv6 (`[::1]`, `[::ffff:127.0.0.1]`) and the IPv4 inside IPv6 forms that
  route to IPv4 (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`);
* every numeric IPv4 spelling `inet_aton` accepts, which is what the C resolver will connect to:
  `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`;
* host names, by resolving them and judging every address they resolve to.

Categories: cloud metadata, link-local, unspecified, multicast and other special-purpose ranges are always
refused; loopback only with `allow_loopback`; RFC 1918, CGNAT and IPv6 ULA ranges only with `allow_private`.
URLs with user info, backslashes or whitespace are refused outright, because URL parsers disagree about them.
A name could resolve differently when the node is called than when it was checked (DNS rebinding); the
discovery poll re-checks every URL on each poll, which bounds that window to one poll interval.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Awaitable[list[str]]]

SCHEMES = frozenset({"http", "https", "ws", "wss"})
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure WireServer
))
PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_FORBIDDEN_CHARS = frozenset("@\\ \t\r\n") | frozenset(chr(c) for c in range(32))


class UnsafeNodeURL(ValueError):
    """The URL may not be called: the message says why (for logs)."""


async def system_resolver(host: str) -> list[str]:
    """Every address `host` resolves to, via the event loop's resolver thread (never blocking the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_node_url(
    url: str,
    *,
    allow_loopback: bool,
    allow_private: bool,
    resolver: Resolver = system_resolver,
    resolve_seconds: float = 5.0,
) -> None:
    """Raise UnsafeNodeURL unless `url` may be called under these rules."""
    host = _host(url)
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        if host == "localhost" or host.endswith(".localhost"):
            raise UnsafeNodeURL(f"{url}: loopback host name")  # RFC 6761: always loopback, whatever DNS says
        addresses = await _resolve(url, host, resolver, resolve_seconds)
    for address in addresses:
        problem = refusal(address, allow_loopback=allow_loopback, allow_private=allow_private)
        if problem is not None:
            raise UnsafeNodeURL(f"{url}: {host} is {problem}")


def _host(url: str) -> str:
    if any(char in _FORBIDDEN_CHARS for char in url):
        raise UnsafeNodeURL(f"{url!r}: user info, backslashes and whitespace are not allowed")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise UnsafeNodeURL(f"{url!r}: malformed URL") from exc
    if parts.scheme.lower() not in SCHEMES:
        raise UnsafeNodeURL(f"{url}: scheme must be one of {', '.join(sorted(SCHEMES))}")
    host = unquote(parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeNodeURL(f"{url}: no host")
    return host


async def _resolve(url: str, host: str, resolver: Resolver, seconds: float) -> list[IPAddress]:
    try:
        async with asyncio.timeout(seconds):
            found = await resolver(host)
    except (OSError, TimeoutError, UnicodeError) as exc:  # gaierror is an OSError
        raise UnsafeNodeURL(f"{url}: cannot resolve {host} ({type(exc).__name__})") from exc
    addresses = [ip for ip in (parse_ip(a) for a in found) if ip is not None]
    if not addresses:
        raise UnsafeNodeURL(f"{url}: {host} resolves to no address")
    return addresses


def parse_ip(host: str) -> IPAddress | None:
    """An IP literal (IPv6 with an optional zone, or any inet_aton IPv4 spelling), else None."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return parse_ipv4_loose(host)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 the way inet_aton reads it: 1-4 parts, each decimal, octal (leading 0) or hex (0x); the last
    part fills the remaining bytes. `127.1`, `0x7f.1`, `017700000001` and `2130706433` are all 127.0.0.1."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _number(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, value in enumerate(head):
        number |= value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _number(part: str) -> int | None:
    try:
        if part[:2].lower() == "0x":
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address really reaches, for the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, *, allow_loopback: bool, allow_private: bool) -> str | None:
    """Why `address` may not be called, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # without its zone (%eth0), which would fail `in`
        inner = embedded_ipv4(address)
        if inner is not None:
            return refusal(inner, allow_loopback=allow_loopback, allow_private=allow_private)
    if address in METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "link-local"
    if address.is_loopback:
        return None if allow_loopback else "loopback (set ALLOW_LOOPBACK_NODES=true to allow)"
    if any(address in network for network in PRIVATE):
        return None if allow_private else "in a private range (ALLOW_PRIVATE_IPS=false)"
    if address.is_multicast or not address.is_global:
        return "a special-purpose address"
    return None
