"""No secret in the logs, error messages or /metrics of a full run of a real `openai-proxy serve` process.

The gateway runs at LOG_LEVEL=debug (the most it ever says) with every secret it can hold set: JWT_SECRET, a
PRIVATE_KEY that signs usage reports to a fake Oracle, ORACLE_API_KEY and a static service key in API_KEYS.
The scenario signs a wallet in, makes streamed and whole requests, fails in every way a client can (bad,
tampered, revoked tokens, rate limit, unknown model, bad body, wrong report key) and a node can (a node error
and a node that drops the answer), logs out, reads /metrics, reports usage, and shuts down. Then the captured
stderr/stdout (JSON lines), every response body and /metrics are searched for each secret and for everything
derived from one: issued tokens and their signatures, the sign-in signature, Authorization header values.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from ..conftest import eventually
from ..fake_oracle import ORACLE_KEY, FakeOracle, running_oracle
from ..reliability.processes import JWT_SECRET, ProcessSet, mint, wallet

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
SERVICE_KEY = "svc-" + "9f" * 24
GATEWAY_KEY = Account.create()


@pytest.fixture
async def oracle() -> AsyncIterator[FakeOracle]:
    async with running_oracle() as fake:
        yield fake


def _hex(signature: bytes) -> str:
    return "0x" + bytes(signature).hex()


async def test_no_secret_reaches_logs_errors_or_metrics(procs: ProcessSet, oracle: FakeOracle) -> None:
    good, failing = procs.devnode("--token-delay", "0.001"), procs.devnode("--fault", "die", "--die-after", "2")
    gateway = procs.gateway(
        [f"petals+ws://127.0.0.1:{good.port}", f"openai+http://127.0.0.1:{failing.port}"],
        log_level="debug", private_key=GATEWAY_KEY.key.hex(), oracle_api_url=oracle.url, oracle_api_key=ORACLE_KEY,
        api_keys=[f"{SERVICE_KEY}:pro:backend"], free_tier_limit=4, usage_report_interval=0.3,
        allow_loopback_nodes=True,
    )
    await asyncio.gather(good.wait_ready(), failing.wait_ready())
    await gateway.wait_ready("/ready")
    user = Account.create()
    secrets = {"JWT_SECRET": JWT_SECRET, "PRIVATE_KEY": GATEWAY_KEY.key.hex().removeprefix("0x"),
               "user key": user.key.hex().removeprefix("0x"), "API key": SERVICE_KEY, "ORACLE_API_KEY": ORACLE_KEY}
    bodies: list[str] = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:

        async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
            response = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
            if response.status_code >= 400 or '"error"' in response.text:  # error messages, in-band ones too
                bodies.append(response.text)
            return response

        nonce = (await call("POST", "/api/v1/auth/nonce", json={"address": user.address})).json()
        signed = _hex(user.sign_message(encode_defunct(text=nonce["message"])).signature)
        secrets["sign-in signature"] = signed.removeprefix("0x")
        token = (await call("POST", "/api/v1/auth/verify", json={"address": user.address, "signature": signed})).json()
        issued = token["token"]
        secrets |= {"issued token": issued, "token signature": issued.rsplit(".", 1)[1]}
        bearer = {"Authorization": f"Bearer {issued}"}
        chat = {"model": LLAMA, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        # Free tier, 4 requests: alternate whole and streamed answers (some land on the node that drops answers
        # and fail over) until the limit answers 429. A request that failed on our side gives its slot back, so
        # the count is not fixed in advance; the bound only keeps a broken limiter from looping forever.
        statuses: list[int] = []
        while 429 not in statuses and len(statuses) < 16:
            answer = await call("POST", "/v1/chat/completions", json={**chat, "stream": len(statuses) % 2 == 1},
                                headers=bearer)
            statuses.append(answer.status_code)
        assert statuses.count(200) >= 4 and statuses[-1] == 429, f"statuses {statuses}, errors: {bodies}"
        await call("POST", "/v1/completions", json={"model": LLAMA, "prompt": "hi", "max_tokens": 3},
                   headers={"Authorization": f"Bearer {SERVICE_KEY}"})
        other = mint(wallet())
        tampered = other.rsplit(".", 1)[0] + "." + issued.rsplit(".", 1)[1]
        secrets |= {"other token": other, "other signature": other.rsplit(".", 1)[1]}
        for headers in ({"Authorization": f"Bearer {tampered}"}, {"Authorization": f"Basic {SERVICE_KEY}"},
                        {"Authorization": f"Bearer {SERVICE_KEY}x"}, {"Authorization": issued}):
            refused = await call("POST", "/v1/chat/completions", json=chat, headers=headers)
            assert refused.status_code == 401, refused.text
        await call("POST", "/v1/chat/completions", json={**chat, "model": "no/such-model"}, headers=bearer)
        await call("POST", "/v1/chat/completions", content=b"{not json", headers=bearer)
        await call("POST", "/api/v1/report", json={}, headers={"x-api-key": ORACLE_KEY[:-1] + "x"})
        await call("GET", "/api/v1/report/agents", headers={"x-api-key": ORACLE_KEY})
        await call("GET", "/api/v1/auth/me", headers=bearer)
        await call("POST", "/api/v1/auth/logout", headers=bearer)
        await call("GET", "/v1/models", headers=bearer)  # revoked now: 401
        metrics = (await call("GET", "/metrics")).text
        reports = len(oracle.reports)

        async def reported() -> bool:
            return len(oracle.reports) > reports

        await eventually(reported)  # a signed report went out after the traffic
    gateway.signal(signal.SIGTERM)
    assert gateway.popen is not None
    await asyncio.to_thread(gateway.popen.wait, 30)
    log = gateway.log()
    assert '"logger":"openai_proxy.access"' in log, log[-4000:]  # the scenario ran and was logged
    assert any(r.get("signature") not in (None, "internal") for r in oracle.reports)  # PRIVATE_KEY was used
    places = {"the gateway's log": log, "/metrics": metrics, "error messages": "\n".join(bodies)}
    for where, text in places.items():
        lowered = text.lower()
        for name, secret in secrets.items():
            assert secret.lower() not in lowered, f"{name} found in {where}"
        assert "'authorization': " not in lowered and '"authorization":' not in lowered, f"headers dumped in {where}"
