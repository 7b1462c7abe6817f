"""Sign-In with Ethereum (EIP-4361): a strict parser, a renderer and the relying-party checks.

The grammar is the ABNF of ERC-4361 (ethereum/ERCs `ERCS/erc-4361.md`), with RFC 3986 for `scheme`,
`authority`, `URI` and `pchar`, and RFC 3339 for `date-time`. Deliberate limits beyond the ABNF, each a
value Python cannot represent or that could never match our origin: the domain's host must be non-empty,
the chain id has at most 78 digits (uint256), leap seconds (`:60`) and year 0000 are refused, and
fractions of a second beyond microseconds are truncated.

The signature is always checked over the text the wallet signed, never over `to_text()`: parsing
normalises (e.g. `+00:00` vs `Z`), so a re-rendered message need not be byte-identical.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final
from urllib.parse import urlsplit

from openai_proxy.auth.wallet import InvalidSignature, checksum, recover_personal_sign

HEADER_SUFFIX: Final = " wants you to sign in with your Ethereum account:"

# RFC 3986 building blocks, as regex fragments. [0-9] rather than \d: \d also matches non-ASCII digits.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_IP_LITERAL = rf"\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
_HOST = rf"(?:{_IP_LITERAL}|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*)"
_AUTHORITY = rf"(?:(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*@)?{_HOST}(?::[0-9]*)?"
_SEGMENTS = rf"(?:/{_PCHAR}*)*"
_HIER_PART = rf"(?://{_AUTHORITY}{_SEGMENTS}|/(?:{_PCHAR}+{_SEGMENTS})?|{_PCHAR}+{_SEGMENTS}|)"
_QUERY = rf"(?:{_PCHAR}|[/?])*"

_SCHEME_RE: Final = re.compile(_SCHEME)
_AUTHORITY_RE: Final = re.compile(_AUTHORITY)
_URI_RE: Final = re.compile(rf"{_SCHEME}:{_HIER_PART}(?:\?{_QUERY})?(?:#{_QUERY})?")
_HEADER_RE: Final = re.compile(rf"(?:({_SCHEME})://)?(.*){re.escape(HEADER_SUFFIX)}")
_STATEMENT_RE: Final = re.compile(rf"[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS} ]+")
_REQUEST_ID_RE: Final = re.compile(rf"{_PCHAR}*")
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9]{8,}")
_CHAIN_ID_RE: Final = re.compile(r"[0-9]{1,78}")
_DATE_TIME_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)

_REQUIRED_FIELDS: Final = ("URI", "Version", "Chain ID", "Nonce", "Issued At")
_OPTIONAL_FIELDS: Final = ("Expiration Time", "Not Before", "Request ID")
_ALL_FIELDS: Final = (*_REQUIRED_FIELDS, *_OPTIONAL_FIELDS, "Resources")


class SiweError(ValueError):
    """A SIWE message that does not follow EIP-4361 or does not match what this server expects."""


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise SiweError(reason)


def _check_uri(uri: str, what: str) -> None:
    _require(_matches(_URI_RE, uri), f"{what} is not an RFC 3986 URI: {uri!r}")
    try:
        urlsplit(uri)  # also validates bracketed IPv6 hosts, which the regex only shapes
    except ValueError as exc:
        raise SiweError(f"{what} is not an RFC 3986 URI: {uri!r} ({exc})") from exc


def _check_domain(domain: str) -> None:
    _require(_matches(_AUTHORITY_RE, domain), f"domain is not an RFC 3986 authority (host[:port]): {domain!r}")
    host = domain.rpartition("@")[2]
    _require(host != "" and not host.startswith(":"), f"domain has an empty host: {domain!r}")
    _check_uri(f"https://{domain}", "domain")


def _matches(pattern: re.Pattern[str], value: str | None) -> bool:
    """An absent optional value matches; a present one must match `pattern` in full."""
    return value is None or pattern.fullmatch(value) is not None


@dataclass(frozen=True, kw_only=True)
class SiweMessage:
    """One EIP-4361 message. Construction validates every field, so `to_text()` always parses back."""

    domain: str
    scheme: str | None = None
    address: str
    statement: str | None = None
    uri: str
    version: str = "1"
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_domain(self.domain)
        _require(_matches(_SCHEME_RE, self.scheme), f"scheme is not an RFC 3986 scheme: {self.scheme!r}")
        try:
            checksum(self.address)
        except ValueError as exc:
            raise SiweError(str(exc)) from exc
        _require(_matches(_STATEMENT_RE, self.statement), "statement must be one non-empty line of RFC 3986 "
                 f"reserved/unreserved characters and spaces: {self.statement!r}")
        _check_uri(self.uri, "URI")
        _require(self.version == "1", f"unsupported SIWE version {self.version!r} (must be '1')")
        _require(0 <= self.chain_id < 2**256, f"chain id out of range: {self.chain_id}")
        _require(_matches(_NONCE_RE, self.nonce), f"nonce must be at least 8 ASCII letters or digits: "
                 f"{self.nonce!r}")
        for what, value in (("issued-at", self.issued_at), ("expiration-time", self.expiration_time),
                            ("not-before", self.not_before)):
            _require(value is None or value.utcoffset() is not None, f"{what} must be timezone-aware")
        _require(_matches(_REQUEST_ID_RE, self.request_id), f"request id must be RFC 3986 pchars: "
                 f"{self.request_id!r}")
        for resource in self.resources:
            _check_uri(resource, "resource")

    def to_text(self) -> str:
        """The message exactly as EIP-4361 lays it out (LF line ends, no trailing newline)."""
        origin = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [origin + HEADER_SUFFIX, self.address, ""]
        if self.statement is not None:
            lines.append(self.statement)
        lines += ["", f"URI: {self.uri}", f"Version: {self.version}", f"Chain ID: {self.chain_id}"]
        lines += [f"Nonce: {self.nonce}", f"Issued At: {format_time(self.issued_at)}"]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {format_time(self.expiration_time)}")
        if self.not_before is not None:
            lines.append(f"Not Before: {format_time(self.not_before)}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources:
            lines += ["Resources:", *(f"- {resource}" for resource in self.resources)]
        return "\n".join(lines)


def format_time(value: datetime) -> str:
    """RFC 3339 date-time; offsets that are not whole minutes (RFC 3339 has none) become UTC."""
    offset = value.utcoffset()
    if offset is None or offset % timedelta(minutes=1):
        value, offset = value.astimezone(UTC), timedelta(0)
    text = (f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
            f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    if not offset:
        return text + "Z"
    minutes = int(abs(offset).total_seconds()) // 60
    return text + f"{'-' if offset < timedelta(0) else '+'}{minutes // 60:02d}:{minutes % 60:02d}"


def parse_time(text: str, what: str) -> datetime:
    """A tz-aware datetime from an RFC 3339 date-time (`T`/`Z` in either case, `-00:00` = UTC)."""
    match = _DATE_TIME_RE.fullmatch(text)
    if match is None:
        raise SiweError(f"{what} is not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    _require(second != "60", f"{what} is a leap second, which is not supported: {text!r}")
    tz = UTC
    if not zulu:
        _require(int(off_h) < 24 and int(off_m) < 60, f"{what} has an invalid UTC offset: {text!r}")
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-delta if sign == "-" else delta)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz)
    except ValueError as exc:
        raise SiweError(f"{what} is not a valid date-time: {text!r} ({exc})") from exc


def _unexpected(line: str, seen: dict[str, str]) -> SiweError:
    """Why `line` cannot stand where it does, given the fields `seen` so far."""
    if not line:
        return SiweError("unexpected empty line (no blank lines or trailing newline after the fields)")
    key, sep, _ = ("Resources", ":", "") if line == "Resources:" else line.partition(": ")
    if key in _ALL_FIELDS and sep and (key != "Resources" or sep == ":"):
        if key in seen:
            return SiweError(f"duplicated field {key!r}")
        return SiweError(f"field {key!r} is out of order (EIP-4361 order: {', '.join(_ALL_FIELDS)})")
    if line.partition(":")[0] in _ALL_FIELDS:  # e.g. `Version:1`, `Resources: x`
        return SiweError(f"malformed field line {line!r} (want 'Name: value', one space after the colon)")
    return SiweError(f"unexpected text {line!r}")


def _read_fields(lines: list[str], pos: int) -> tuple[dict[str, str], int]:
    """The `Name: value` fields from `lines[pos:]` in their fixed order, and the position after them."""
    values: dict[str, str] = {}
    for name in _REQUIRED_FIELDS:
        if pos >= len(lines):
            raise SiweError(f"missing field {name!r}")
        key, sep, value = lines[pos].partition(": ")
        if key != name or not sep:
            found = _unexpected(lines[pos], values)
            raise SiweError(f"expected field {name!r} on line {pos + 1}: {found}")
        values[name], pos = value, pos + 1
    for name in _OPTIONAL_FIELDS:
        if pos < len(lines) and lines[pos].startswith(name + ": "):
            values[name], pos = lines[pos][len(name) + 2 :], pos + 1
    return values, pos


def _read_resources(lines: list[str], pos: int, seen: dict[str, str]) -> tuple[str, ...]:
    if pos == len(lines):
        return ()
    if lines[pos] != "Resources:":
        raise _unexpected(lines[pos], seen)
    resources = []
    for line in lines[pos + 1 :]:
        if not line.startswith("- "):
            raise _unexpected(line, {**seen, "Resources": ""})
        resources.append(line[2:])
    return tuple(resources)


def _read_preamble(lines: list[str]) -> tuple[str | None, str, str, str | None, int]:
    """Scheme, domain, address, statement and the index of the first field line."""
    header = _HEADER_RE.fullmatch(lines[0])
    if header is None:
        raise SiweError(f"line 1 must be '[scheme://]domain{HEADER_SUFFIX}'")
    _require(len(lines) > 4, "message too short: expected address, blank line(s) and fields")
    _require(lines[2] == "", "line 3 must be empty (after the address)")
    if lines[3] == "":
        return header.group(1), header.group(2), lines[1], None, 4
    _require(lines[4] == "", "line 5 must be empty (after the statement); a message without a "
             "statement has two empty lines after the address")
    return header.group(1), header.group(2), lines[1], lines[3], 5


def parse_siwe(text: str) -> SiweMessage:
    """Parse an EIP-4361 message strictly; SiweError says precisely what is wrong."""
    _require("\r" not in text, "SIWE message must use LF line endings, found CR")
    lines = text.split("\n")
    scheme, domain, address, statement, pos = _read_preamble(lines)
    fields, pos = _read_fields(lines, pos)
    resources = _read_resources(lines, pos, fields)
    chain_id = fields["Chain ID"]
    _require(_matches(_CHAIN_ID_RE, chain_id), f"chain id must be 1 to 78 digits: {chain_id!r}")
    optional = fields.get
    return SiweMessage(
        domain=domain, scheme=scheme, address=address, statement=statement, uri=fields["URI"],
        version=fields["Version"], chain_id=int(chain_id), nonce=fields["Nonce"],
        issued_at=parse_time(fields["Issued At"], "issued-at"),
        expiration_time=_optional_time(optional("Expiration Time"), "expiration-time"),
        not_before=_optional_time(optional("Not Before"), "not-before"),
        request_id=optional("Request ID"), resources=resources,
    )


def _optional_time(text: str | None, what: str) -> datetime | None:
    return None if text is None else parse_time(text, what)


def _under_prefix(uri: str, prefix: str) -> bool:
    """`uri` is `prefix` or below it; a bare startswith would let `http://a:3200` admit `http://a:32000`."""
    if not uri.startswith(prefix):
        return False
    rest = uri[len(prefix) :]
    return not rest or prefix.endswith("/") or rest[0] in "/?#"


def check_siwe(msg: SiweMessage, *, domain: str, uri_prefix: str, chain_id: int, nonce: str,
               now: datetime, skew: timedelta = timedelta(minutes=2)) -> None:
    """Relying-party checks of EIP-4361: origin, chain, nonce and time window.

    `uri_prefix` is our origin (e.g. `http://localhost:3200`); its scheme is what a present `scheme`
    must equal. `skew` forgives a client clock that runs ahead (issued-at, not-before); expiry is exact,
    because forgiving it would only lengthen the message's life.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    _require(msg.domain.lower() == domain.lower(),
             f"SIWE domain mismatch: expected {domain!r}, got {msg.domain!r}")
    our_scheme = urlsplit(uri_prefix).scheme.lower()
    _require(msg.scheme is None or msg.scheme.lower() == our_scheme,
             f"SIWE scheme mismatch: expected {our_scheme!r}, got {msg.scheme!r}")
    _require(_under_prefix(msg.uri, uri_prefix), f"SIWE URI mismatch: expected {uri_prefix!r} or a "
             f"path below it, got {msg.uri!r}")
    _require(msg.chain_id == chain_id, f"SIWE chain id mismatch: expected {chain_id}, got {msg.chain_id}")
    # Constant time: cheap insurance, although a nonce is not a long-lived secret.
    _require(hmac.compare_digest(msg.nonce.encode(), nonce.encode()), "SIWE nonce mismatch")
    _require(msg.issued_at <= now + skew, f"SIWE message issued in the future: issued at "
             f"{format_time(msg.issued_at)}, now {format_time(now)}")
    _require(msg.expiration_time is None or now < msg.expiration_time,
             f"SIWE message expired at {format_time(msg.expiration_time or now)}")
    _require(msg.not_before is None or msg.not_before <= now + skew,
             f"SIWE message not valid before {format_time(msg.not_before or now)}")


def build_siwe(*, origin: str, address: str, chain_id: int, nonce: str, issued_at: datetime,
               expiration_time: datetime | None, statement: str) -> SiweMessage:
    """Our login message for `origin` (`scheme://host[:port]`): domain, scheme and URI come from it."""
    parts = urlsplit(origin)
    _require(bool(parts.scheme and parts.netloc) and parts.path in ("", "/") and not parts.query
             and not parts.fragment, f"origin must be scheme://host[:port], got {origin!r}")
    try:
        address = checksum(address)
    except ValueError as exc:
        raise SiweError(str(exc)) from exc
    return SiweMessage(
        domain=parts.netloc, scheme=parts.scheme, address=address, statement=statement or None,
        uri=f"{parts.scheme}://{parts.netloc}", chain_id=chain_id, nonce=nonce, issued_at=issued_at,
        expiration_time=expiration_time,
    )


def verify_siwe(text: str, signature: str, *, domain: str, uri_prefix: str, chain_id: int, nonce: str,
                now: datetime, skew: timedelta = timedelta(minutes=2)) -> SiweMessage:
    """Parse, check and verify the EIP-191 signature of `text`; the message proves its address signed.

    Externally owned accounts only (no EIP-1271 contract wallets). Raises SiweError or InvalidSignature,
    both ValueError. The signature is recovered over `text` itself, as the wallet signed it.
    """
    msg = parse_siwe(text)
    check_siwe(msg, domain=domain, uri_prefix=uri_prefix, chain_id=chain_id, nonce=nonce, now=now, skew=skew)
    signer = recover_personal_sign(text, signature)
    if signer.lower() != msg.address.lower():
        raise InvalidSignature(f"message names {checksum(msg.address)} but was signed by {signer}")
    return msg
