"""EIP-4361 parsing, rendering and relying-party checks, with real eth-account signatures."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import given
from hypothesis import strategies as st

from openai_proxy.auth.siwe import SiweError, SiweMessage, build_siwe, check_siwe, parse_siwe, verify_siwe
from openai_proxy.auth.wallet import InvalidSignature, sign_personal

# The first example of ERC-4361, byte for byte (implicit scheme).
SPEC_EXAMPLE = """example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""

ORIGIN = "http://localhost:3200"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ADDRESS = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"

# Every optional field present, so each grammar test below can break exactly one thing.
FULL = f"""http://localhost:3200 wants you to sign in with your Ethereum account:
{ADDRESS}

Sign in to the Plumise Inference API.

URI: http://localhost:3200/auth
Version: 1
Chain ID: 41956
Nonce: abcDEF123456
Issued At: 2025-01-02T03:04:00Z
Expiration Time: 2025-01-02T04:14:00.5+01:00
Not Before: 2025-01-02T03:03:00Z
Request ID: req-1
Resources:
- https://localhost:3200/v1/models
- urn:plumise:inference"""


def _check(msg: SiweMessage, **overrides: Any) -> None:
    params: dict[str, Any] = {"domain": "localhost:3200", "uri_prefix": ORIGIN, "chain_id": 41956,
                              "nonce": "abcDEF123456", "now": NOW}
    check_siwe(msg, **{**params, **overrides})


def _ours(**overrides: Any) -> SiweMessage:
    fields: dict[str, Any] = {"domain": "localhost:3200", "scheme": "http", "address": ADDRESS,
                              "uri": ORIGIN + "/auth", "chain_id": 41956, "nonce": "abcDEF123456",
                              "issued_at": NOW - timedelta(seconds=5)}
    return SiweMessage(**{**fields, **overrides})


@pytest.fixture
def account() -> LocalAccount:
    created: LocalAccount = Account.create()
    return created


# --- parsing what wallets and the spec produce -------------------------------------------------------


def test_spec_example_parses_and_renders_back_byte_for_byte() -> None:
    msg = parse_siwe(SPEC_EXAMPLE)
    assert msg.domain == "example.com" and msg.scheme is None
    assert msg.address == ADDRESS
    assert msg.statement == "I accept the ExampleOrg Terms of Service: https://example.com/tos"
    assert (msg.uri, msg.version, msg.chain_id) == ("https://example.com/login", "1", 1)
    assert msg.nonce == "32891756"
    assert msg.issued_at == datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)
    assert msg.expiration_time is None and msg.not_before is None and msg.request_id is None
    assert msg.resources[1] == "https://example.com/my-web2-claim.json"
    assert msg.to_text() == SPEC_EXAMPLE


@pytest.mark.parametrize(("header", "scheme", "domain"), [
    ("example.com:3388", None, "example.com:3388"),
    ("https://example.com", "https", "example.com"),
    ("http://[::1]:3200", "http", "[::1]:3200"),
    ("127.0.0.1", None, "127.0.0.1"),
])
def test_spec_header_variants(header: str, scheme: str | None, domain: str) -> None:
    msg = parse_siwe(SPEC_EXAMPLE.replace("example.com wants", f"{header} wants", 1))
    assert (msg.scheme, msg.domain) == (scheme, domain)


def test_full_message_parses() -> None:
    msg = parse_siwe(FULL)
    assert msg.expiration_time == datetime(2025, 1, 2, 3, 14, 0, 500_000, tzinfo=UTC)
    assert msg.not_before == datetime(2025, 1, 2, 3, 3, tzinfo=UTC)
    assert msg.request_id == "req-1"
    assert msg.resources == ("https://localhost:3200/v1/models", "urn:plumise:inference")
    assert parse_siwe(msg.to_text()) == msg


def test_message_without_statement_has_two_blank_lines() -> None:
    msg = _ours()
    assert f"{ADDRESS}\n\n\nURI: " in msg.to_text()
    assert parse_siwe(msg.to_text()) == msg


def test_lowercase_address_and_rfc3339_variants() -> None:
    text = (FULL.replace(ADDRESS, ADDRESS.lower())
            .replace("2025-01-02T03:04:00Z", "2025-01-02t03:04:00.123456789z")
            .replace("Request ID: req-1", "Request ID: "))
    msg = parse_siwe(text)
    assert msg.address == ADDRESS.lower()
    assert msg.issued_at == datetime(2025, 1, 2, 3, 4, 0, 123456, tzinfo=UTC)  # truncated to microseconds
    assert msg.request_id == ""
    assert parse_siwe(msg.to_text()) == msg


def test_empty_resources_list_is_allowed() -> None:
    text = FULL.split("\nResources:")[0] + "\nResources:"
    assert parse_siwe(text).resources == ()


def test_handwritten_spec_format_message_signed_by_a_wallet_verifies(account: LocalAccount) -> None:
    text = (f"localhost:3200 wants you to sign in with your Ethereum account:\n{account.address}\n\n"
            "I accept the Plumise Terms of Service: https://localhost:3200/tos\n\n"
            "URI: http://localhost:3200/login\nVersion: 1\nChain ID: 41956\nNonce: 32891756\n"
            "Issued At: 2025-01-02T03:04:00Z\nResources:\n- https://localhost:3200/v1/models")
    msg = verify_siwe(text, sign_personal(text, account.key), domain="localhost:3200", uri_prefix=ORIGIN,
                      chain_id=41956, nonce="32891756", now=NOW)
    assert msg.address == account.address


# --- round trip --------------------------------------------------------------------------------------

_STATEMENT_CHARS = string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;= "
_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=_offsets)
_uri_heads = st.sampled_from(["https://example.com/", "urn:x:", "ipfs://bafy/", "mailto:"])
_uris = st.builds("{}{}".format, _uri_heads, st.text(_PCHARS, max_size=12))


@given(
    scheme=st.none() | st.sampled_from(["http", "https", "web+siwe"]),
    domain=st.sampled_from(["example.com", "localhost:3200", "[::1]:80", "a.b.c", "user@host:1"]),
    address=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    statement=st.none() | st.text(_STATEMENT_CHARS, min_size=1, max_size=60),
    uri=_uris,
    chain_id=st.integers(0, 2**256 - 1),
    nonce=st.from_regex(r"[A-Za-z0-9]{8,40}", fullmatch=True),
    times=st.tuples(_times, st.none() | _times, st.none() | _times),
    request_id=st.none() | st.text(_PCHARS, max_size=20),
    resources=st.lists(_uris, max_size=3).map(tuple),
)
def test_round_trip(times: tuple[datetime, datetime | None, datetime | None], **fields: Any) -> None:
    issued_at, expiration_time, not_before = times
    msg = SiweMessage(issued_at=issued_at, expiration_time=expiration_time, not_before=not_before, **fields)
    text = msg.to_text()
    assert parse_siwe(text) == msg
    assert parse_siwe(text).to_text() == text


def test_offset_with_seconds_is_rendered_in_utc() -> None:
    odd = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone(timedelta(minutes=90, seconds=30)))
    msg = _ours(issued_at=odd)
    assert "Issued At: 2025-01-01T10:29:30Z" in msg.to_text()
    assert parse_siwe(msg.to_text()) == msg


# --- grammar violations ------------------------------------------------------------------------------

_Edit = Callable[[str], str]


def _sub(old: str, new: str) -> _Edit:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


def _swap_lines(text: str, first: str, second: str) -> str:
    lines = text.split("\n")
    i = next(n for n, line in enumerate(lines) if line.startswith(first))
    j = next(n for n, line in enumerate(lines) if line.startswith(second))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


_VIOLATIONS: list[tuple[str, _Edit, str]] = [
    ("crlf", lambda t: t.replace("\n", "\r\n"), "LF line endings"),
    ("bare-cr", _sub("Version: 1", "Version: 1\r"), "LF line endings"),
    ("trailing-newline", lambda t: t + "\n", "unexpected empty line"),
    ("trailing-text", lambda t: t + "\nhello", "unexpected text 'hello'"),
    ("trailing-text-no-resources", lambda t: t.split("\nResources:")[0] + "\nP.S. hi", "unexpected text"),
    ("leading-space", lambda t: " " + t, "domain is not an RFC 3986 authority"),
    ("header-no-colon", _sub("Ethereum account:", "Ethereum account"), "line 1"),
    ("header-other-words", _sub("wants you to sign in", "wants you to log in"), "line 1"),
    ("header-case", _sub("wants you", "Wants you"), "line 1"),
    ("empty-domain", _sub("http://localhost:3200 wants", " wants"), "empty host"),
    ("domain-with-path", _sub("localhost:3200 wants", "localhost:3200/x wants"), "authority"),
    ("domain-with-space", _sub("localhost:3200 wants", "local host wants"), "authority"),
    ("bad-ipv6-domain", _sub("localhost:3200 wants", "[zz::1] wants"), "domain"),
    ("bad-scheme", _sub("http://localhost", "1http://localhost"), "authority"),
    ("address-bad-checksum", _sub(ADDRESS, ADDRESS[:-1] + "c"), "checksum"),
    ("address-short", _sub(ADDRESS, ADDRESS[:-1]), "not an Ethereum address"),
    ("address-no-0x", _sub(ADDRESS, ADDRESS[2:] + "00"), "not an Ethereum address"),
    ("address-ens", _sub(ADDRESS, "vitalik.eth"), "not an Ethereum address"),
    ("no-blank-after-address", _sub(f"{ADDRESS}\n\n", f"{ADDRESS}\n"), "line 3 must be empty"),
    ("no-blank-after-statement", _sub("API.\n\nURI", "API.\nURI"), "line 5 must be empty"),
    ("two-statement-lines", _sub("API.\n", "API.\nMore.\n"), "line 5 must be empty"),
    ("statement-non-ascii", _sub("Sign in", "Sign ín"), "statement"),
    ("statement-quote", _sub("Sign in", 'Sign "in"'), "statement"),
    ("statement-percent", _sub("Sign in", "100% in"), "statement"),
    ("statement-tab", _sub("Sign in", "Sign\tin"), "statement"),
    ("extra-blank-before-fields", _sub("API.\n\n", "API.\n\n\n"), "expected field 'URI'"),
    ("missing-uri", _sub("URI: http://localhost:3200/auth\n", ""), "expected field 'URI'"),
    ("bad-uri", _sub("URI: http://localhost:3200/auth", "URI: not a uri"), "URI is not an RFC 3986 URI"),
    ("uri-relative", _sub("URI: http://localhost:3200/auth", "URI: /auth"), "URI is not"),
    ("uri-bad-percent", _sub("/auth\n", "/a%zz\n"), "URI is not"),
    ("lowercase-field-name", _sub("URI: ", "uri: "), "expected field 'URI'"),
    ("no-space-after-colon", _sub("Version: 1", "Version:1"), "malformed field line"),
    ("two-spaces-after-colon", _sub("Version: 1", "Version:  1"), "unsupported SIWE version"),
    ("version-2", _sub("Version: 1", "Version: 2"), "unsupported SIWE version '2'"),
    ("reordered", lambda t: _swap_lines(t, "Version", "Chain ID"), "out of order"),
    ("uri-last", lambda t: _swap_lines(t, "URI", "Issued At"), "out of order"),
    ("missing-version", _sub("Version: 1\n", ""), "expected field 'Version'"),
    ("chain-id-letters", _sub("Chain ID: 41956", "Chain ID: 0xa3e4"), "chain id"),
    ("chain-id-negative", _sub("Chain ID: 41956", "Chain ID: -1"), "chain id"),
    ("chain-id-empty", _sub("Chain ID: 41956", "Chain ID: "), "chain id"),
    ("chain-id-unicode-digits", _sub("Chain ID: 41956", "Chain ID: \u0661\u0662"), "chain id"),
    ("chain-id-huge", _sub("Chain ID: 41956", "Chain ID: " + "9" * 79), "chain id"),
    ("chain-id-over-uint256", _sub("Chain ID: 41956", "Chain ID: " + str(2**256)), "chain id"),
    ("nonce-short", _sub("Nonce: abcDEF123456", "Nonce: abc1234"), "nonce must be at least 8"),
    ("nonce-dash", _sub("Nonce: abcDEF123456", "Nonce: abcd-1234"), "nonce"),
    ("nonce-space", _sub("Nonce: abcDEF123456", "Nonce: abcd 1234"), "nonce"),
    ("duplicate-nonce", _sub("Nonce: abcDEF123456\n", "Nonce: abcDEF123456\nNonce: abcDEF123456\n"),
     "expected field 'Issued At'"),
    ("missing-issued-at", _sub("Issued At: 2025-01-02T03:04:00Z\n", ""), "expected field 'Issued At'"),
    ("date-no-offset", _sub("03:04:00Z", "03:04:00"), "RFC 3339"),
    ("date-space", _sub("2025-01-02T03:04:00Z", "2025-01-02 03:04:00Z"), "RFC 3339"),
    ("date-month-13", _sub("2025-01-02T03:04:00Z", "2025-13-02T03:04:00Z"), "valid date-time"),
    ("date-feb-30", _sub("2025-01-02T03:04:00Z", "2025-02-30T03:04:00Z"), "valid date-time"),
    ("date-hour-24", _sub("2025-01-02T03:04:00Z", "2025-01-02T24:04:00Z"), "valid date-time"),
    ("date-leap-second", _sub("2025-01-02T03:04:00Z", "2016-12-31T23:59:60Z"), "leap second"),
    ("date-offset-24", _sub("2025-01-02T03:04:00Z", "2025-01-02T03:04:00+24:00"), "UTC offset"),
    ("date-offset-no-colon", _sub("03:04:00Z", "03:04:00+0100"), "RFC 3339"),
    ("date-empty-fraction", _sub("03:04:00Z", "03:04:00.Z"), "RFC 3339"),
    ("date-unix", _sub("2025-01-02T03:04:00Z", "1735787040"), "RFC 3339"),
    ("date-year-0", _sub("2025-01-02T03:04:00Z", "0000-01-02T03:04:00Z"), "valid date-time"),
    ("bad-expiration", _sub("04:14:00.5+01:00", "soon"), "expiration-time"),
    ("duplicate-expiration", _sub("Not Before", "Expiration Time: 2025-01-02T03:14:00Z\nNot Before"),
     "duplicated field 'Expiration Time'"),
    ("optional-reordered", lambda t: _swap_lines(t, "Expiration Time", "Not Before"), "out of order"),
    ("request-id-space", _sub("Request ID: req-1", "Request ID: req 1"), "request id"),
    ("request-id-before-nonce", _sub("Nonce: abcDEF123456", "Request ID: x\nNonce: abcDEF123456"),
     "expected field 'Nonce'"),
    ("resources-no-dash", _sub("- urn:", "urn:"), "unexpected text"),
    ("resources-no-space", _sub("- urn:", "-urn:"), "unexpected text"),
    ("resource-not-uri", _sub("- urn:plumise:inference", "- not a uri"), "resource is not"),
    ("resources-twice", lambda t: t + "\nResources:", "duplicated field 'Resources'"),
    ("resources-header-space", _sub("Resources:", "Resources: "), "malformed field line"),
    ("field-after-resources", lambda t: t + "\nRequest ID: x", "duplicated field 'Request ID'"),
    ("truncated", lambda t: "\n".join(t.split("\n")[:3]), "too short"),
    ("empty", lambda t: "", "line 1"),
]


@pytest.mark.parametrize(("edit", "reason"), [pytest.param(e, r, id=i) for i, e, r in _VIOLATIONS])
def test_grammar_violations(edit: _Edit, reason: str) -> None:
    parse_siwe(FULL)  # the base text is valid, so each case breaks exactly what it names
    with pytest.raises(SiweError, match=re.escape(reason)):
        parse_siwe(edit(FULL))


def test_statement_that_looks_like_a_field_still_needs_its_blank_line() -> None:
    text = _ours().to_text().replace(f"{ADDRESS}\n\n\n", f"{ADDRESS}\n\n")
    with pytest.raises(SiweError, match="two empty lines after the address"):
        parse_siwe(text)


@pytest.mark.parametrize("bad", [
    {"statement": ""}, {"issued_at": datetime(2025, 1, 1)}, {"not_before": datetime(2025, 1, 1)},
    {"chain_id": -1}, {"scheme": ""}, {"version": "2"}, {"address": "0x" + ADDRESS[2:].swapcase()},
    {"resources": ("ok:x", "not ok")}, {"request_id": "a b"}, {"statement": "two\nlines"},
])
def test_constructor_validates(bad: dict[str, Any]) -> None:
    with pytest.raises(SiweError):
        _ours(**bad)


# --- relying-party checks ----------------------------------------------------------------------------


def test_check_accepts_our_message() -> None:
    _check(parse_siwe(FULL), now=datetime(2025, 1, 2, 3, 5, tzinfo=UTC))
    _check(_ours(scheme=None))  # scheme is optional
    _check(_ours(domain="LOCALHOST:3200", uri=ORIGIN))  # hosts are case-insensitive; the bare origin is fine
    _check(_ours(uri=ORIGIN + "?x=1"))


@pytest.mark.parametrize(("change", "reason"), [
    ({"domain": "evil.com"}, "SIWE domain mismatch: expected 'localhost:3200', got 'evil.com'"),
    ({"domain": "localhost:3201"}, "SIWE domain mismatch"),
    ({"domain": "localhost"}, "SIWE domain mismatch"),
    ({"domain": "user@localhost:3200"}, "SIWE domain mismatch"),
    ({"scheme": "https"}, "SIWE scheme mismatch: expected 'http', got 'https'"),
    ({"uri": "https://localhost:3200/auth"}, "SIWE URI mismatch"),
    ({"uri": "http://localhost:32000/auth"}, "SIWE URI mismatch"),
    ({"uri": "http://localhost:3200@evil.com/"}, "SIWE URI mismatch"),
    ({"chain_id": 1}, "SIWE chain id mismatch: expected 41956, got 1"),
    ({"nonce": "abcDEF123457"}, "SIWE nonce mismatch"),
    ({"nonce": "ABCDEF123456"}, "SIWE nonce mismatch"),
    ({"issued_at": NOW + timedelta(minutes=2, seconds=1)}, "issued in the future"),
    ({"expiration_time": NOW}, "expired at 2025-01-02T03:04:05Z"),
    ({"expiration_time": NOW - timedelta(days=1)}, "expired"),
    ({"not_before": NOW + timedelta(minutes=2, seconds=1)}, "not valid before"),
])
def test_check_rejects(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(SiweError, match=reason):
        _check(_ours(**change))


def test_uri_prefix_is_matched_at_a_boundary() -> None:
    msg = _ours(domain="localhost", uri="http://localhost.evil.com/auth")
    with pytest.raises(SiweError, match="SIWE URI mismatch"):
        _check(msg, domain="localhost", uri_prefix="http://localhost")
    _check(replace(msg, uri="http://localhost/auth"), domain="localhost", uri_prefix="http://localhost")
    _check(replace(msg, uri="http://localhost/auth"), domain="localhost", uri_prefix="http://localhost/")


def test_check_skew_applies_to_client_clock_only() -> None:
    _check(_ours(issued_at=NOW + timedelta(minutes=2), not_before=NOW + timedelta(minutes=2)))
    _check(_ours(expiration_time=NOW + timedelta(microseconds=1)))
    with pytest.raises(SiweError, match="issued in the future"):
        _check(_ours(issued_at=NOW + timedelta(seconds=10)), skew=timedelta(0))


def test_check_needs_an_aware_clock() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _check(_ours(), now=NOW.replace(tzinfo=None))


def test_check_compares_instants_across_offsets() -> None:
    plus_one = timezone(timedelta(hours=1))
    with pytest.raises(SiweError, match="expired"):
        _check(_ours(expiration_time=NOW.astimezone(plus_one)))


# --- build and verify --------------------------------------------------------------------------------


def test_build_siwe_derives_origin_fields(account: LocalAccount) -> None:
    msg = build_siwe(origin=ORIGIN + "/", address=account.address.lower(), chain_id=41956,
                     nonce="abcDEF123456", issued_at=NOW, expiration_time=NOW + timedelta(minutes=5),
                     statement="Sign in to the Plumise Inference API.")
    assert (msg.domain, msg.scheme, msg.uri) == ("localhost:3200", "http", ORIGIN)
    assert msg.address == account.address
    header = "http://localhost:3200 wants you to sign in with your Ethereum account:"
    assert msg.to_text().startswith(f"{header}\n{msg.address}\n")
    assert parse_siwe(msg.to_text()) == msg
    _check(msg)


def test_build_siwe_empty_statement_means_none(account: LocalAccount) -> None:
    msg = build_siwe(origin="https://api.example.com", address=account.address, chain_id=1,
                     nonce="abcDEF123456", issued_at=NOW, expiration_time=None, statement="")
    assert msg.statement is None and msg.expiration_time is None


@pytest.mark.parametrize("origin", ["localhost:3200", "http://localhost:3200/auth", "http://", "http://x/?a"])
def test_build_siwe_rejects_non_origins(origin: str) -> None:
    with pytest.raises(SiweError, match="origin must be"):
        build_siwe(origin=origin, address=ADDRESS, chain_id=1, nonce="abcDEF123456", issued_at=NOW,
                   expiration_time=None, statement="x")


def test_build_siwe_rejects_bad_address() -> None:
    with pytest.raises(SiweError, match="checksum"):
        build_siwe(origin=ORIGIN, address="0x" + ADDRESS[2:].swapcase(), chain_id=1, nonce="abcDEF123456",
                   issued_at=NOW, expiration_time=None, statement="x")


def _verify(text: str, signature: str) -> SiweMessage:
    return verify_siwe(text, signature, domain="localhost:3200", uri_prefix=ORIGIN, chain_id=41956,
                       nonce="abcDEF123456", now=NOW)


def test_verify_siwe_round_trip(account: LocalAccount) -> None:
    text = _ours(address=account.address).to_text()
    assert _verify(text, sign_personal(text, account.key)).address == account.address


def test_verify_siwe_lowercase_address_line(account: LocalAccount) -> None:
    text = _ours(address=account.address.lower()).to_text()
    assert _verify(text, sign_personal(text, account.key)).address == account.address.lower()


def test_verify_siwe_rejects_swapped_address_line(account: LocalAccount) -> None:
    victim = Account.create()
    text = _ours(address=victim.address).to_text()  # the attacker signs a message naming the victim
    with pytest.raises(InvalidSignature, match=f"names {victim.address} but was signed by {account.address}"):
        _verify(text, sign_personal(text, account.key))


def test_verify_siwe_rejects_text_changed_after_signing(account: LocalAccount) -> None:
    text = _ours(address=account.address, statement="Read only.").to_text()
    signature = sign_personal(text, account.key)
    with pytest.raises(InvalidSignature):
        _verify(text.replace("Read only.", "Full access."), signature)


def test_verify_siwe_checks_the_text_as_signed_not_a_rerendering(account: LocalAccount) -> None:
    # `+00:00` parses to the same message as `Z`, but the wallet signed the `+00:00` bytes.
    text = _ours(address=account.address).to_text().replace("03:04:00Z", "03:04:00+00:00")
    assert parse_siwe(text).to_text() != text
    assert _verify(text, sign_personal(text, account.key)).address == account.address
    with pytest.raises(InvalidSignature):
        _verify(parse_siwe(text).to_text(), sign_personal(text, account.key))


def test_verify_siwe_checks_before_trusting_the_signature(account: LocalAccount) -> None:
    text = _ours(address=account.address, chain_id=1).to_text()
    with pytest.raises(SiweError, match="chain id mismatch"):
        _verify(text, sign_personal(text, account.key))


@given(pos=st.integers(0, len(FULL)), cut=st.integers(0, 5), insert=st.text(max_size=5))
def test_mangled_text_raises_only_siwe_error(pos: int, cut: int, insert: str) -> None:
    """Any edit of a valid message either parses to a message that round-trips or raises SiweError."""
    try:
        msg = parse_siwe(FULL[:pos] + insert + FULL[pos + cut :])
    except SiweError:
        return
    assert parse_siwe(msg.to_text()) == msg
