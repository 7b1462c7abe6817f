"""`GET /api/v1/payment/balance`: the signed-in wallet's credit on the InferencePayment contract.

Amounts are wei as decimal strings (they overflow a JavaScript number) with a PLM rendering beside each.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth.principal import Tier
from ..chain.payment import PRO_TIER, plm
from ..chain.rpc import RpcError, RpcUnavailable
from ..errors import Forbidden, NotFound, ServiceUnavailable
from ..limits import store_down
from ..store import StoreUnavailable
from .context import gateway
from .docs import Operation


def amount(wei: int) -> dict[str, str]:
    return {"wei": str(wei), "plm": plm(wei)}


async def balance(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    if gw.chain is None:
        raise NotFound("On-chain payments are not enabled on this gateway (CHAIN_ENABLED).", code="chain_disabled")
    if principal.kind != "wallet":
        raise Forbidden("Balances belong to wallets; this is a service key.", code="wallet_required")
    chain, address = gw.chain, principal.subject
    try:
        credit, cost, minimum = await asyncio.gather(
            chain.payment.credit(address), chain.payment.cost_per_1000_tokens(), chain.payment.pro_tier_minimum()
        )
    except (RpcUnavailable, RpcError) as exc:
        raise ServiceUnavailable(
            "The Plumise chain cannot be reached right now; balances need it. Retry shortly.",
            retry_after=5, code="chain_unavailable",
        ) from exc
    chain_tier: Tier = "pro" if credit.tier == PRO_TIER else "free"
    await chain.tiers.remember(address, chain_tier)  # a fresh answer anyway: the tier cache may as well have it
    try:
        line = await chain.ledger.account(address)
    except StoreUnavailable as exc:
        raise store_down(exc) from exc
    body = {
        "address": address,
        "tier": principal.tier,
        "chain_tier": chain_tier,
        "balance": amount(credit.balance),
        "used_credits": amount(credit.used_credits),
        "last_deposit": credit.last_deposit or None,
        "cost_per_1000_tokens": amount(cost),
        "pro_tier_minimum": amount(minimum),
        "pending_debit": {
            "tokens": line.pending,
            "in_flight_tokens": line.in_flight,
            "cost": amount((line.pending + line.in_flight) * cost // 1000),
        },
        "billing": chain.sender is not None,
        "contract": chain.payment.address,
        "chain_id": gw.settings.chain_id,
    }
    return Response(json.dumps(body), media_type="application/json")


routes = [Route("/api/v1/payment/balance", balance, methods=["GET"])]

_AMOUNT = {"type": "object", "required": ["wei", "plm"], "properties": {
    "wei": {"type": "string", "pattern": "^[0-9]+$"}, "plm": {"type": "string"}}}
operations = [
    Operation(
        "GET", "/api/v1/payment/balance", "This wallet's credit on the InferencePayment contract", "Auth",
        errors=(403, 404, 503),
        description="Balance, used credits and tier as the contract holds them, the price, and the debits the "
        "gateway has not confirmed on chain yet. 404 `chain_disabled` when the gateway runs without the chain; "
        "503 `chain_unavailable` while the chain node cannot be reached.",
        response={"type": "object", "required": ["address", "tier", "chain_tier", "balance"], "properties": {
            "address": {"type": "string"}, "tier": {"enum": ["free", "pro"]},
            "chain_tier": {"enum": ["free", "pro"]}, "balance": _AMOUNT, "used_credits": _AMOUNT,
            "last_deposit": {"type": ["integer", "null"]}, "cost_per_1000_tokens": _AMOUNT,
            "pro_tier_minimum": _AMOUNT,
            "pending_debit": {"type": "object", "properties": {
                "tokens": {"type": "integer"}, "in_flight_tokens": {"type": "integer"}, "cost": _AMOUNT}},
            "billing": {"type": "boolean"}, "contract": {"type": "string"}, "chain_id": {"type": "integer"}}},
    ),
]
