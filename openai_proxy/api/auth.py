"""Wallet sign-in and the account view: /api/v1/auth/{nonce,verify,logout,me}."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import NonceRequest, VerifyRequest
from .body import parse_json_body
from .context import gateway

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
