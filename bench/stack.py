"""One benchmark stack: a devnode and every server under test in front of it, as subprocesses on loopback.

Targets: the node itself (the floor), the gateway (one process; a free wallet with a limit so high it never
refuses, so rate limiting runs on every request, and a pro wallet, which skips the limiter), the bare
passthrough with httpx and with aiohttp, and LiteLLM's proxy on the node's OpenAI-compatible path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from openai_proxy.auth.jwt import TokenService

from .http1 import Request
from .servers import Server, free_port, start_server, wait_answering

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CHAT_PATH = "/v1/chat/completions"
FREE_WALLET = "0x1111111111111111111111111111111111111111"
PRO_WALLET = "0x2222222222222222222222222222222222222222"
FREE_TIER_LIMIT = 1_000_000_000  # the limiter counts every request and never refuses one
DIRECT = "node (direct)"
_GATEWAY_UNSET = {"REDIS_URL", "ORACLE_API_URL", "PETALS_API_URL", "API_KEYS", "MODELS_FILE", "LOG_LEVEL",
                  "FREE_TIER_WINDOW", "JWT_EXPIRATION", "JWT_ISSUER", "JWT_AUDIENCE"}
START_LIMIT = 120.0  # seconds a server may take to answer its first request (LiteLLM imports a lot)


@dataclass
class Target:
    """Something the load generators point at: a server, and the headers its requests carry."""

    name: str
    server: Server
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    def request(self, body: dict[str, object]) -> Request:
        return Request.post_json("127.0.0.1", self.port, CHAT_PATH, body, self.headers)


@dataclass
class Stack:
    node: Server
    servers: list[Server]
    targets: list[Target]

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))


@dataclass(frozen=True)
class StackOptions:
    workdir: Path
    logdir: Path
    litellm: bool
    aiohttp: bool
    gateway_scheme: str = "openai+http"
    gateway_workers: int = 1  # `serve --workers N`; more than one needs `redis_url`
    redis_url: str | None = None  # the gateway's state store (default: in memory)


def litellm_available() -> bool:
    return importlib.util.find_spec("litellm") is not None and importlib.util.find_spec("fastapi") is not None


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


def chat_body(max_tokens: int, *, stream: bool = False, content: str = "Say something.") -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": stream}


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken-cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONFAULTHANDLER"] = "1"  # a server that crashes in C leaves a Python traceback in its log
    return env


async def start_stack(label: str, token_delay: float, options: StackOptions) -> Stack:
    """Start the node, wait for it, then start and wait for everything in front of it (in parallel)."""
    env = base_env()
    python = sys.executable
    logdir = options.logdir / label
    node_port = free_port()
    node_argv = [python, "-m", "openai_proxy", "devnode", "--port", str(node_port), "--token-delay", str(token_delay)]
    node = await start_server("devnode", node_argv, port=node_port, env=env, workdir=options.workdir, logdir=logdir)
    servers = [node]
    try:
        await wait_answering(node, Request.post_json("127.0.0.1", node_port, CHAT_PATH, chat_body(1), {}), 30)
        targets = [Target(DIRECT, node)]
        starts = [_gateway(node_port, options, env, logdir), _passthrough("httpx", node_port, options, env, logdir)]
        if options.aiohttp:
            starts.append(_passthrough("aiohttp", node_port, options, env, logdir))
        if options.litellm:
            starts.append(_litellm(node_port, options, env, logdir))
        started = await asyncio.gather(*starts, return_exceptions=True)
        for item in started:
            if isinstance(item, list):
                servers.extend({id(t.server): t.server for t in item}.values())
                targets.extend(item)
        failures = [item for item in started if isinstance(item, BaseException)]
        if failures:
            raise failures[0]
    except BaseException:
        await asyncio.gather(*(server.stop() for server in servers))
        raise
    return Stack(node=node, servers=servers, targets=targets)


async def _ready(server: Server, targets: list[Target]) -> list[Target]:
    """Wait until the server answers; stop it if it never does."""
    try:
        await wait_answering(server, targets[0].request(chat_body(1)), START_LIMIT)
    except BaseException:
        await server.stop()
        raise
    return targets


async def _gateway(node_port: int, options: StackOptions, env: dict[str, str], logdir: Path) -> list[Target]:
    port = free_port()
    secret = secrets.token_hex(32)
    # Settings the caller's environment might hold that would change what is measured.
    env = {key: value for key, value in env.items() if key.upper() not in _GATEWAY_UNSET}
    env |= {
        "HOST": "127.0.0.1", "PORT": str(port), "JWT_SECRET": secret,
        "NODE_URLS": f"{options.gateway_scheme}://127.0.0.1:{node_port}", "PRO_ADDRESSES": PRO_WALLET,
        "FREE_TIER_LIMIT": str(FREE_TIER_LIMIT),
    }
    if options.redis_url:
        # A prefix of its own per run: nothing else in that database is touched, nothing needs flushing.
        env |= {"REDIS_URL": options.redis_url, "REDIS_PREFIX": f"bench-{secrets.token_hex(4)}:"}
    argv = [sys.executable, "-m", "openai_proxy", "serve", "--workers", str(options.gateway_workers)]
    server = await start_server("gateway", argv, port=port, env=env, workdir=options.workdir, logdir=logdir)
    tokens = TokenService(secret, lifetime=86400, issuer="openai-proxy", audience="openai-proxy")
    targets = [
        Target("gateway (free)", server, {"Authorization": f"Bearer {tokens.mint(FREE_WALLET).token}"}),
        Target("gateway (pro)", server, {"Authorization": f"Bearer {tokens.mint(PRO_WALLET).token}"}),
    ]
    return await _ready(server, targets)


async def _passthrough(
    client: str, node_port: int, options: StackOptions, env: dict[str, str], logdir: Path
) -> list[Target]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.passthrough", "--port", str(port),
            "--upstream", f"http://127.0.0.1:{node_port}", "--client", client]
    server = await start_server(f"passthrough-{client}", argv, port=port, env=env, workdir=options.workdir,
                                logdir=logdir)
    return await _ready(server, [Target(f"passthrough ({client})", server)])


async def _litellm(node_port: int, options: StackOptions, env: dict[str, str], logdir: Path) -> list[Target]:
    port = free_port()
    master_key = f"sk-{secrets.token_hex(16)}"  # LiteLLM refuses to start without one
    env = env | {
        "LITELLM_MASTER_KEY": master_key,
        "BENCH_NODE_API_BASE": f"http://127.0.0.1:{node_port}/v1",
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: never fetch the cost map at start
        # For a model named like Llama 3, LiteLLM fetches a tokenizer from the Hugging Face hub to count
        # streamed tokens; offline that retries for ~20 s per request. Offline mode fails fast instead.
        "HF_HUB_OFFLINE": "1",
    }
    script = Path(sys.executable).parent / "litellm"
    argv = [str(script), "--config", str(BENCH_DIR / "litellm_config.yaml"), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    server = await start_server("litellm", argv, port=port, env=env, workdir=options.workdir, logdir=logdir)
    return await _ready(server, [Target("litellm proxy", server, {"Authorization": f"Bearer {master_key}"})])
