"""The SSRF filter for Oracle-supplied node URLs: every spelling of a forbidden address is refused."""

from __future__ import annotations

import pytest

from openai_proxy.nodes.ssrf import UnsafeNodeURL, check_node_url, parse_ipv4_loose, system_resolver


async def check(url: str, *, loopback: bool = False, private: bool = True, names: dict[str, list[str]] | None = None
                ) -> None:
    async def resolver(host: str) -> list[str]:
        if names is None or host not in names:
            raise OSError(f"unknown host {host}")
        return names[host]

    await check_node_url(url, allow_loopback=loopback, allow_private=private, resolver=resolver)


@pytest.mark.parametrize("url", [
    "http://8.8.8.8:31331", "https://1.1.1.1/", "ws://9.9.9.9:8080/api/v2/generate", "wss://[2606:4700::1111]/",
])
async def test_public_addresses_pass(url: str) -> None:
    await check(url)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://169.254.170.2/", "http://[fd00:ec2::254]/",
    "http://100.100.100.200/", "http://168.63.129.16/", "http://169.254.1.1:80/", "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/", "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://0.0.0.0:8000/", "http://[::]/", "http://224.0.0.1/", "http://255.255.255.255/", "http://240.0.0.1/",
    "http://2852039166/",  # 169.254.169.254 as one number
])
@pytest.mark.parametrize("lenient", [False, True])
async def test_metadata_link_local_and_special_addresses_are_always_refused(url: str, lenient: bool) -> None:
    with pytest.raises(UnsafeNodeURL):
        await check(url, loopback=lenient, private=lenient)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:31331", "http://127.1/", "http://0x7f.1/", "http://2130706433/", "http://0177.0.0.1/",
    "http://017700000001/", "http://0x7f000001/", "http://127.000.000.1/", "http://[::1]:8000/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[2002:7f00:1::]/", "http://localhost:8000/",
    "http://LOCALHOST./", "http://api.localhost/", "http://127.0.0.1.:80/",
])
async def test_loopback_in_any_spelling_is_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UnsafeNodeURL, match="loopback"):
        await check(url)
    if "localhost" not in url.lower():
        await check(url, loopback=True)


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:31331", "http://172.16.3.4/", "http://172.31.255.255/", "http://192.168.1.10/",
    "http://100.64.0.1/", "http://[fd12:3456::1]/", "http://[::ffff:10.1.2.3]/", "http://0xa.1/", "http://167772161/",
])
async def test_private_ranges_follow_allow_private_ips(url: str) -> None:
    await check(url, private=True)
    with pytest.raises(UnsafeNodeURL, match="private"):
        await check(url, private=False)


async def test_host_names_are_judged_by_every_address_they_resolve_to() -> None:
    names = {
        "node.example": ["203.0.113.7", "8.8.4.4"],  # 203.0.113.0/24 is documentation space: not global
        "good.example": ["8.8.4.4", "2606:4700::1111"],
        "rebind.example": ["8.8.4.4", "169.254.169.254"],
        "inside.example": ["10.1.1.1"],
        "self.example": ["127.0.0.1"],
    }
    await check("http://good.example:31331", names=names)
    for host in ("node.example", "rebind.example", "self.example"):
        with pytest.raises(UnsafeNodeURL):
            await check(f"http://{host}/", names=names)
    await check("http://inside.example/", names=names)
    with pytest.raises(UnsafeNodeURL, match="private"):
        await check("http://inside.example/", names=names, private=False)
    with pytest.raises(UnsafeNodeURL, match="resolve"):
        await check("http://unknown.example/", names=names)


async def test_a_name_the_system_resolver_maps_to_loopback_is_refused() -> None:
    async def alias_of_localhost(host: str) -> list[str]:  # as if DNS said "alias.test CNAME localhost"
        return await system_resolver("localhost")

    with pytest.raises(UnsafeNodeURL, match="loopback"):
        await check_node_url("http://alias.test:1/", allow_loopback=False, allow_private=True,
                             resolver=alias_of_localhost)


@pytest.mark.parametrize("url", [
    "ftp://8.8.8.8/", "file:///etc/passwd", "gopher://8.8.8.8/", "petals+http://8.8.8.8/", "8.8.8.8:80",
    "http://user@8.8.8.8/", "http://8.8.8.8\\@127.0.0.1/", "http://8.8.8.8 /", "http://8.8.8.8:99999/", "http:///x",
])
async def test_other_schemes_and_ambiguous_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeNodeURL):
        await check(url, loopback=True)


def test_numeric_ipv4_spellings_follow_inet_aton() -> None:
    assert str(parse_ipv4_loose("127.1")) == "127.0.0.1"
    assert str(parse_ipv4_loose("10.1.257")) == "10.1.1.1"
    assert str(parse_ipv4_loose("0xc0.0250.1.1")) == "192.168.1.1"
    assert str(parse_ipv4_loose("4294967295")) == "255.255.255.255"
    for not_an_address in ("4294967296", "256.1.1.1", "1.2.3.4.5", "08.1.1.1", "0x.1g", "example", "1..2", ""):
        assert parse_ipv4_loose(not_an_address) is None
