"""The logs of a whole `openai-proxy serve` run: one JSON object per line, a request id on every request,
the fields an operator needs, and none of the secrets or prompt text that passed through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
from eth_account import Account
from eth_account.messages import encode_defunct

from openai_proxy.logs import redact

from .conftest import JWT_SECRET, sse_payloads
from .serve_support import ServedGateway, serve_gateway

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
CANARY = "canary-prompt-text-7f3a9c"


async def sign_in(http: httpx.AsyncClient, gw: ServedGateway) -> tuple[str, str, str]:
    """A real wallet sign-in; returns (address, signature, JWT)."""
    account = Account.create()
    nonce = (await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": account.address})).json()
    signature = "0x" + bytes(account.sign_message(encode_defunct(text=nonce["message"])).signature).hex()
    verified = await http.post(f"{gw.url}/api/v1/auth/verify",
                               json={"address": account.address, "signature": signature})
    assert verified.status_code == 200, verified.text
    return account.address, signature, verified.json()["token"]


async def traffic(http: httpx.AsyncClient, gw: ServedGateway) -> dict[str, Any]:
    """Sign in, then chat (plain and streamed) with the canary prompt, and send two bad credentials."""
    address, signature, token = await sign_in(http, gw)
    bearer = {"Authorization": f"Bearer {token}"}
    body = {"model": LLAMA, "max_tokens": 4, "messages": [{"role": "user", "content": f"Say {CANARY}"}]}
    plain = await http.post(f"{gw.url}/v1/chat/completions", json=body, headers=bearer)
    streamed = await http.post(f"{gw.url}/v1/chat/completions", json={**body, "stream": True}, headers=bearer)
    forged = jwt.encode({"sub": address, "address": address.lower()}, "not-the-gateway-secret-0123456789abcdef")
    refused = [await http.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {credential}"})
               for credential in (forged, "sk-not-a-real-key-SECRETCANARY")]
    assert plain.status_code == 200 and sse_payloads(streamed.text)[-1] == "[DONE]"
    assert [r.status_code for r in refused] == [401, 401]
    return {"address": address, "secrets": [signature, token, forged, "SECRETCANARY", JWT_SECRET],
            "request_ids": [r.headers["x-request-id"] for r in (plain, streamed, *refused)]}


async def run_and_read_logs(start_devnode, tmp_path: Path, **settings: str) -> tuple[dict[str, Any], str]:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    async with serve_gateway(tmp_path, [node.url], **settings) as gw, httpx.AsyncClient(timeout=30) as http:
        seen = await traffic(http, gw)
        gw.terminate()
        assert await gw.stopped_cleanly()
        return seen, gw.log_text()


async def test_every_line_is_json_with_the_request_fields_and_no_secret(start_devnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen, text = await run_and_read_logs(start_devnode, tmp_path)
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg", "request_id", "pid"} <= entry.keys() for entry in entries)
    access = {e["request_id"]: e for e in entries if e["logger"] == "openai_proxy.access"}
    assert set(seen["request_ids"]) <= access.keys()  # the x-request-id a client sees finds its log line

    plain, streamed, forged, bad_key = (access[rid] for rid in seen["request_ids"])
    address = seen["address"]
    for entry in (plain, streamed):
        assert entry["route"] == "/v1/chat/completions" and entry["status"] == 200 and entry["model"] == LLAMA
        assert entry["nodes"] == ["0x000000000000000000000000000000000000dead"]
        assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] == 4
        assert entry["latency_ms"] >= entry["ttft_ms"] > 0
        assert entry["wallet"] == f"{address[:6]}\u2026{address[-4:]}" and entry["tier"] == "free"
    assert forged["status"] == bad_key["status"] == 401 and forged["wallet"] is None

    lowered = text.lower()
    for secret in seen["secrets"]:
        assert secret.lower() not in lowered
    assert address.lower() not in lowered  # only the shortened form
    assert "bearer" not in lowered and "authorization" not in lowered
    assert CANARY not in text


async def test_prompt_text_is_logged_only_when_log_prompts_is_on(start_devnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen, text = await run_and_read_logs(start_devnode, tmp_path, LOG_PROMPTS="true")
    access = [json.loads(line) for line in text.splitlines() if '"openai_proxy.access"' in line]
    prompts = [entry["prompt"] for entry in access if "prompt" in entry]
    assert len(prompts) == 2 and all(CANARY in prompt for prompt in prompts)


def test_the_formatter_masks_credentials_that_reach_it() -> None:
    token = jwt.encode({"sub": "x"}, "secret-secret-secret-secret-secret!")
    signature = "0x" + "ab" * 65
    line = redact(f"token={token} header=Bearer abc.def-123 sig={signature} fine=0x{'cd' * 20}")
    assert token not in line and "abc.def-123" not in line and signature not in line
    assert f"0x{'cd' * 20}" in line  # an address is not a secret
