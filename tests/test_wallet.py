"""Wallet signatures: real keys and signatures from eth-account, no mocks."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount

from openai_proxy.auth.wallet import (
    PLAIN_MESSAGE_TEMPLATE,
    SECP256K1_N,
    InvalidSignature,
    checksum,
    normalize_signature,
    plain_message,
    recover_personal_sign,
    recover_typed_data,
    sign_personal,
    sign_typed,
    typed_data,
)

SECP256K1_P = 2**256 - 2**32 - 977
MESSAGE = plain_message("a" * 64)


@pytest.fixture
def account() -> LocalAccount:
    created: LocalAccount = Account.create()
    return created


@pytest.fixture
def other() -> LocalAccount:
    created: LocalAccount = Account.create()
    return created


def _split(signature: str) -> tuple[int, int, int]:
    raw = bytes.fromhex(signature[2:])
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]


def _join(r: int, s: int, v: int) -> str:
    return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])).hex()


def _login(account: LocalAccount, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"address": account.address, "nonce": "n0nce123", "issued_at": 1_700_000_000,
                              "chain_id": 41956}
    return typed_data(**{**fields, **overrides})


def test_plain_message_is_the_original_services_text() -> None:
    expected = "Sign this message to authenticate with Plumise Inference API.\n\nNonce: deadbeef"
    assert plain_message("deadbeef") == expected
    assert PLAIN_MESSAGE_TEMPLATE.format(nonce="deadbeef") == expected


def test_personal_sign_round_trip(account: LocalAccount) -> None:
    signature = sign_personal(MESSAGE, account.key)
    assert signature.startswith("0x") and len(signature) == 132
    assert recover_personal_sign(MESSAGE, signature) == account.address


def test_signature_made_by_eth_account_directly_recovers(account: LocalAccount) -> None:
    signed = Account.sign_message(encode_defunct(text=MESSAGE), account.key)
    assert recover_personal_sign(MESSAGE, "0x" + bytes(signed.signature).hex()) == account.address


def test_private_key_as_hex_string(account: LocalAccount) -> None:
    signature = sign_personal(MESSAGE, "0x" + bytes(account.key).hex())
    assert signature == sign_personal(MESSAGE, bytes(account.key))  # RFC 6979: deterministic


def test_wrong_signer_recovers_a_different_address(account: LocalAccount, other: LocalAccount) -> None:
    assert recover_personal_sign(MESSAGE, sign_personal(MESSAGE, other.key)) == other.address


def test_tampered_message_recovers_someone_else(account: LocalAccount) -> None:
    signature = sign_personal(MESSAGE, account.key)
    assert recover_personal_sign(MESSAGE.replace("Nonce: a", "Nonce: b"), signature) != account.address


def test_typed_data_shape(account: LocalAccount) -> None:
    data = _login(account, address=account.address.lower())
    assert data["primaryType"] == "Login"
    assert data["domain"] == {"name": "Plumise Inference API", "version": "1", "chainId": 41956}
    assert [f["name"] for f in data["types"]["EIP712Domain"]] == ["name", "version", "chainId"]
    assert data["types"]["Login"] == [
        {"name": "address", "type": "address"},
        {"name": "nonce", "type": "string"},
        {"name": "issuedAt", "type": "uint256"},
    ]
    assert data["message"] == {"address": account.address, "nonce": "n0nce123", "issuedAt": 1_700_000_000}


def test_typed_data_round_trip(account: LocalAccount) -> None:
    data = _login(account)
    signature = sign_typed(data, account.key)
    assert len(signature) == 132
    assert recover_typed_data(data, signature) == account.address


def test_typed_data_signed_by_eth_account_directly(account: LocalAccount) -> None:
    data = _login(account)
    signed = Account.sign_message(encode_typed_data(full_message=data), account.key)
    assert recover_typed_data(data, "0x" + bytes(signed.signature).hex()) == account.address


@pytest.mark.parametrize("change", [{"nonce": "other999"}, {"chain_id": 1}, {"issued_at": 1}])
def test_tampered_typed_data_recovers_someone_else(account: LocalAccount, change: dict[str, Any]) -> None:
    signature = sign_typed(_login(account), account.key)
    assert recover_typed_data(_login(account, **change), signature) != account.address


def test_typed_data_is_not_a_personal_sign(account: LocalAccount) -> None:
    data = _login(account)
    assert recover_personal_sign(str(data), sign_typed(data, account.key)) != account.address


def test_malformed_typed_data_is_invalid_signature(account: LocalAccount) -> None:
    data = _login(account)
    signature = sign_typed(data, account.key)
    broken = {key: value for key, value in data.items() if key != "types"}
    with pytest.raises(InvalidSignature, match="typed data cannot be encoded"):
        recover_typed_data(broken, signature)


def _valid() -> str:
    return sign_personal(MESSAGE, Account.create().key)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: "0x", id="only-prefix"),
        pytest.param(lambda s: s[2:], id="no-0x"),
        pytest.param(lambda s: "0X" + s[2:], id="upper-0X"),
        pytest.param(lambda s: s[:-1], id="129-hex"),
        pytest.param(lambda s: s + "00", id="66-bytes"),
        pytest.param(lambda s: s[:-4], id="63-bytes"),
        pytest.param(lambda s: s[:-2] + "zz", id="non-hex"),
        pytest.param(lambda s: " " + s, id="leading-space"),
        pytest.param(lambda s: s + "\n", id="trailing-newline"),
        pytest.param(lambda s: s[:-2] + "05", id="v=5"),
        pytest.param(lambda s: s[:-2] + "1d", id="v=29"),
        pytest.param(lambda s: s[:-2] + "25", id="v=37-eip155"),
        pytest.param(lambda s: "0x" + "00" * 32 + s[66:], id="r=0"),
        pytest.param(lambda s: s[:66] + "00" * 32 + s[-2:], id="s=0"),
        pytest.param(lambda s: s[:66] + SECP256K1_N.to_bytes(32, "big").hex() + s[-2:], id="s=n"),
        pytest.param(lambda s: "0x" + SECP256K1_N.to_bytes(32, "big").hex() + s[66:], id="r=n"),
    ],
)
def test_malformed_signatures_are_rejected(mangle: Any) -> None:
    bad = mangle(_valid())
    with pytest.raises(InvalidSignature):
        normalize_signature(bad)
    with pytest.raises(InvalidSignature):
        recover_personal_sign(MESSAGE, bad)


def test_invalid_signature_is_a_value_error_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"invalid signature: recovery id v must be 0, 1, 27 or 28, got 5"):
        normalize_signature(_valid()[:-2] + "05")


def test_r_that_is_not_on_the_curve_fails_recovery_cleanly(account: LocalAccount) -> None:
    # An r with no point x = r on secp256k1 passes every format check but cannot be recovered.
    r = next(x for x in range(1, 1000) if pow(x**3 + 7, (SECP256K1_P - 1) // 2, SECP256K1_P) != 1)
    _, s, v = _split(sign_personal(MESSAGE, account.key))
    with pytest.raises(InvalidSignature, match="recovery failed"):
        recover_personal_sign(MESSAGE, _join(r, s, v))


def test_v_as_0_or_1(account: LocalAccount) -> None:
    r, s, v = _split(sign_personal(MESSAGE, account.key))
    assert recover_personal_sign(MESSAGE, _join(r, s, v - 27)) == account.address
    assert normalize_signature(_join(r, s, v - 27)) == normalize_signature(_join(r, s, v))


def test_eip2098_compact_signature(account: LocalAccount) -> None:
    signature = sign_personal(MESSAGE, account.key)
    r, s, v = _split(signature)
    compact = "0x" + (r.to_bytes(32, "big") + (((v - 27) << 255) | s).to_bytes(32, "big")).hex()
    assert len(compact) == 130
    assert normalize_signature(compact) == bytes.fromhex(signature[2:])
    assert recover_personal_sign(MESSAGE, compact) == account.address


def test_compact_with_flipped_parity_is_someone_else(account: LocalAccount) -> None:
    r, s, v = _split(sign_personal(MESSAGE, account.key))
    flipped = "0x" + (r.to_bytes(32, "big") + (((28 - v) << 255) | s).to_bytes(32, "big")).hex()
    assert recover_personal_sign(MESSAGE, flipped) != account.address


def test_high_s_twin_is_accepted_and_canonicalised(account: LocalAccount) -> None:
    signature = sign_personal(MESSAGE, account.key)
    r, s, v = _split(signature)
    assert s <= SECP256K1_N // 2  # eth-account emits low-s, like every mainstream wallet
    twin = _join(r, SECP256K1_N - s, 55 - v)  # 27 <-> 28
    assert twin != signature
    assert recover_personal_sign(MESSAGE, twin) == account.address
    assert normalize_signature(twin) == normalize_signature(signature) == bytes.fromhex(signature[2:])


def test_eth_keys_itself_accepts_high_s(account: LocalAccount) -> None:
    """Pins the library behaviour wallet.py's docstring describes; if this flips, revisit the policy."""
    r, s, v = _split(sign_personal(MESSAGE, account.key))
    twin = bytes.fromhex(_join(r, SECP256K1_N - s, 55 - v)[2:])
    assert Account.recover_message(encode_defunct(text=MESSAGE), signature=twin) == account.address


def test_high_s_twin_with_unflipped_v_is_someone_else(account: LocalAccount) -> None:
    r, s, v = _split(sign_personal(MESSAGE, account.key))
    assert recover_personal_sign(MESSAGE, _join(r, SECP256K1_N - s, v)) != account.address


def test_checksum(account: LocalAccount) -> None:
    address = account.address
    assert checksum(address.lower()) == address
    assert checksum("0x" + address[2:].upper()) == address
    assert checksum(address) == address


@pytest.mark.parametrize(
    "address",
    [
        "",
        "0x",
        "0x" + "a" * 39,
        "0x" + "a" * 41,
        "a" * 40,
        "0X" + "a" * 40,
        "0x" + "g" * 40,
        " 0x" + "a" * 40,
        "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756cc2",  # one letter's case wrong
    ],
)
def test_checksum_rejects_malformed(address: str) -> None:
    with pytest.raises(ValueError):
        checksum(address)


def test_typed_data_rejects_bad_address() -> None:
    with pytest.raises(ValueError):
        typed_data(address="0x1234", nonce="n0nce123", issued_at=0, chain_id=1)
