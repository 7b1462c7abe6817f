"""Wallet sign-in and the account view: /api/v1/auth/{nonce,verify,logout,me}."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import NonceRequest, NonceResponse, TokenResponse, VerifyRequest
from .body import parse_json_body
from .context import gateway
from .docs import Operation

AUTH_BODY_LIMIT = 16 * 1024


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def nonce(request: Request) -> Response:
    gw = gateway(request)
    body = await parse_json_body(request, NonceRequest, AUTH_BODY_LIMIT)
    issued = await gw.signin.issue(body.address, client_ip(request))
    return Response(issued.model_dump_json(), media_type="application/json")


async def verify(request: Request) -> Response:
    gw = gateway(request)
    body = await parse_json_body(request, VerifyRequest, AUTH_BODY_LIMIT)
    token = await gw.signin.verify(body, client_ip(request))
    return Response(token.model_dump_json(), media_type="application/json")


async def logout(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    await gw.auth.revoke(principal)
    return Response(json.dumps({"status": "ok", "revoked": principal.token_id}), media_type="application/json")


async def me(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    window = await gw.limiter.peek(principal)
    settings = gw.settings
    limits = {
        "requests_per_window": None if window is None else window.limit,
        "window_seconds": None if window is None else settings.free_tier_window,
        "remaining": None if window is None else window.remaining,
        "reset_seconds": None if window is None else round(window.reset_after, 3),
        "max_tokens": settings.tier_max_tokens(principal.tier),
        "allowed_models": [s.id for s in gw.catalog if s.tier == "free" or principal.tier == "pro"],
    }
    body = {
        "address": principal.subject,
        "tier": principal.tier,
        "limits": limits,
        "usage_today": await gw.limiter.usage_today(principal),
    }
    return Response(json.dumps(body), media_type="application/json")


routes = [
    Route("/api/v1/auth/nonce", nonce, methods=["POST"]),
    Route("/api/v1/auth/verify", verify, methods=["POST"]),
    Route("/api/v1/auth/logout", logout, methods=["POST"]),
    Route("/api/v1/auth/me", me, methods=["GET"]),
]
_NULLABLE_INT = {"type": ["integer", "null"]}
operations = [
    Operation("POST", "/api/v1/auth/nonce", "Get a sign-in nonce and the messages to sign", "Auth",
              request=NonceRequest, response=NonceResponse, errors=(400, 413, 429, 503), auth=False,
              description="Sign one of `message` (EIP-191 personal_sign), `siwe_message` (EIP-4361) or "
              "`typed_data` (EIP-712), then send the signature to `/api/v1/auth/verify`."),
    Operation("POST", "/api/v1/auth/verify", "Exchange a signed nonce for an API token (JWT)", "Auth",
              request=VerifyRequest, response=TokenResponse, errors=(400, 401, 413, 429, 503), auth=False),
    Operation("POST", "/api/v1/auth/logout", "Revoke the token used for this call", "Auth", errors=(503,),
              response={"type": "object", "required": ["status", "revoked"], "properties": {
                  "status": {"const": "ok"}, "revoked": {"type": ["string", "null"]}}}),
    Operation("GET", "/api/v1/auth/me", "This account: tier, limits and today's usage", "Auth", errors=(503,),
              response={"type": "object", "required": ["address", "tier", "limits", "usage_today"], "properties": {
                  "address": {"type": "string"}, "tier": {"enum": ["free", "pro"]},
                  "limits": {"type": "object", "properties": {
                      "requests_per_window": _NULLABLE_INT, "window_seconds": _NULLABLE_INT,
                      "remaining": _NULLABLE_INT, "reset_seconds": {"type": ["number", "null"]},
                      "max_tokens": {"type": "integer"},
                      "allowed_models": {"type": "array", "items": {"type": "string"}}}},
                  "usage_today": {"type": "object", "additionalProperties": {"type": "integer"}}}}),
]
