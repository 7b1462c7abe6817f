"""The chain package's pure parts: amounts, fee bumps, the in-flight record, and the chain on/off switch."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from openai_proxy.chain.ledger import InFlight, Signed
from openai_proxy.chain.payment import InferencePayment, plm, selector
from openai_proxy.chain.signer import Fees
from openai_proxy.settings import Settings

from .conftest import make_settings


@pytest.mark.parametrize(
    ("wei", "text"),
    [(0, "0"), (10**18, "1"), (15 * 10**17, "1.5"), (10**15, "0.001"), (1, "0.000000000000000001"),
     (123 * 10**18 + 4, "123.000000000000000004")],
)
def test_plm_renders_wei_exactly(wei: int, text: str) -> None:
    assert plm(wei) == text


def test_use_credits_calldata_is_the_abi_encoding() -> None:
    data = InferencePayment.use_credits_data("0x" + "ab" * 20, 1234)
    assert data[:4] == selector("useCredits(address,uint256)") == bytes.fromhex("26691b6e")
    assert data[4:] == bytes(12) + bytes.fromhex("ab" * 20) + (1234).to_bytes(32, "big")


def test_a_replacement_outbids_the_stuck_version_by_a_quarter() -> None:
    stuck = Signed(hash="0x1", raw="0x2", max_fee=1000, tip=100)
    assert Fees(max_fee=900, tip=50).outbid(stuck) == Fees(max_fee=1251, tip=126)
    assert Fees(max_fee=5000, tip=300).outbid(stuck) == Fees(max_fee=5000, tip=300)  # today's fees already win
    legacy = Signed(hash="0x1", raw="0x2", max_fee=1000, tip=None)
    assert Fees(max_fee=900, tip=None).outbid(legacy) == Fees(max_fee=1251, tip=None)


def test_the_in_flight_record_round_trips() -> None:
    tx = InFlight(address="0xabc", nonce=7, tokens=99, sent_at=12.5,
                  versions=(Signed("0x1", "0x2", 10, 1), Signed("0x3", "0x4", 13, None)))
    assert InFlight.from_json(tx.to_json()) == tx


def test_the_default_contract_is_plumise_mainnets_inference_payment() -> None:
    assert Settings.model_fields["inference_payment_address"].default == "0x5bfb4d6feab6e7ec09edb6044dcafd23bc8c20c5"


def test_the_chain_is_off_unless_asked_for() -> None:
    assert not make_settings().chain_on
    assert make_settings(chain_rpc_url="http://127.0.0.1:8545").chain_on
    assert not make_settings(chain_rpc_url="http://127.0.0.1:8545", chain_enabled=False).chain_on
    assert make_settings(chain_enabled=True).chain_on
    with pytest.raises(ValidationError):
        make_settings(gateway_private_key="0x1234")
    with pytest.raises(ValidationError):
        make_settings(inference_payment_address="0x5bfb")
