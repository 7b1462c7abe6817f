"""One `openai-proxy serve` process for the whole session's hostile-client tests (attacks, fuzzing, slow and
broken clients), so the suite starts one gateway instead of one per test file.

Its three devnodes each serve one model, so a test picks the node it needs by the model it asks for:
`FAST_MODEL` (OpenAI-type, every answer ends after 8 tokens: cheap for fuzzing), `WHOLE_MODEL` (a Plumise
node answering in one piece, instantly) and `SLOW_MODEL` (OpenAI-type, 50 ms per token, 262,144 tokens of
context). Its limits are tight so the tests are quick: 1 s head deadline, 2 s keep-alive, 1 s send timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .processes import Proc, ProcessSet, wallet

FAST_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
WHOLE_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
SLOW_MODEL = "qwen/qwen3.5-397b-a17b"  # pro only
PRO = wallet()
SERVICE_KEY = "hostile-service-key-" + "7" * 32
ORACLE_KEY = "hostile-oracle-key-0123456789"
ORIGIN = "https://app.example"
MAX_BODY = 8 * 1024 * 1024


@dataclass
class Hostile:
    gateway: Proc
    fast: Proc
    whole: Proc
    slow: Proc

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    procs = ProcessSet(tmp_path_factory.mktemp("hostile"))
    try:
        fast = procs.devnode("--model", FAST_MODEL, "--eos-after", "8")
        whole = procs.devnode("--model", WHOLE_MODEL)
        slow = procs.devnode("--model", SLOW_MODEL, "--token-delay", "0.05")
        gateway = procs.gateway(
            [f"openai+http://127.0.0.1:{fast.port}", f"http://127.0.0.1:{whole.port}",
             f"openai+http://127.0.0.1:{slow.port}"],
            pro_addresses=[PRO], api_keys=[f"{SERVICE_KEY}:pro:hostile"], oracle_api_key=ORACLE_KEY,
            cors_origins=[ORIGIN], free_tier_limit=1_000_000, max_body_bytes=MAX_BODY,
            header_timeout_seconds=1, keep_alive_seconds=2, sse_send_timeout=1,
        )
        asyncio.run(_ready(gateway, fast, whole, slow))
        yield Hostile(gateway, fast, whole, slow)
    finally:
        procs.close()


async def _ready(gateway: Proc, *nodes: Proc) -> None:
    await asyncio.gather(*(node.wait_ready() for node in nodes))
    await gateway.wait_ready("/ready")

    async def all_in_rotation() -> bool:
        import httpx

        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{gateway.url}/api/v1/nodes")).json()["nodes"]
        return sum(node["status"] == "online" for node in listed) == len(nodes)

    for _ in range(400):
        if await all_in_rotation():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the hostile gateway's nodes never all came into rotation")
