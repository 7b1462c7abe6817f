"""CORS from CORS_ORIGINS: configured origins only, credentials never with a wildcard, and the headers a
browser client needs (request id, rate limits) exposed."""

from __future__ import annotations

import pytest

from .conftest import make_settings

APP = "https://app.example.test"
OTHER = "https://evil.example.test"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.fixture
async def gateway(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([node.url], cors_origins=[APP, "http://localhost:3000"])


async def test_preflight_from_a_configured_origin_is_allowed_with_credentials(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await http.options(f"{gateway.v1}/chat/completions", headers=preflight(APP))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= set(response.headers["access-control-allow-headers"].split(","))


async def test_preflight_from_another_origin_is_refused(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await http.options(f"{gateway.v1}/chat/completions", headers=preflight(OTHER))
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_responses_expose_the_request_id_and_rate_limit_headers(gateway, http) -> None:  # type: ignore[no-untyped-def]
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = await http.post(f"{gateway.v1}/chat/completions", json=body,
                               headers={**gateway.headers(), "Origin": APP})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "origin" in response.headers["vary"].lower()
    exposed = set(response.headers["access-control-expose-headers"].split(", "))
    sent = {"x-request-id", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests"}
    assert sent <= exposed and "retry-after" in exposed
    assert sent <= set(response.headers)  # what is exposed is really there for a script to read


async def test_a_simple_request_from_another_origin_gets_no_cors_grant(gateway, http) -> None:  # type: ignore[no-untyped-def]
    response = await http.get(f"{gateway.url}/health", headers={"Origin": OTHER})
    assert response.status_code == 200  # the server answers; the browser withholds it from the page
    assert "access-control-allow-origin" not in response.headers


async def test_a_wildcard_origin_never_comes_with_credentials(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gateway = await start_gateway([node.url], cors_origins=["*"])
    response = await http.options(f"{gateway.v1}/models", headers=preflight(OTHER, "GET"))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    simple = await http.get(f"{gateway.url}/health", headers={"Origin": OTHER})
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in simple.headers


def test_cors_origins_is_a_comma_list_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", f"{APP}, http://localhost:3000")
    settings = make_settings()
    assert settings.cors_origins == [APP, "http://localhost:3000"]
