"""The chaos run: many clients against a real gateway while its nodes are killed and hung.

Three devnode processes of three kinds (`petals+ws://`, `openai+http://`, `http://` Plumise) behind one
`openai-proxy serve` process. Clients send a steady mix of chat and text completions, streamed and not, while
a controller SIGKILLs one node and restarts it on the same port, and makes another (a streaming one: a hung
Plumise node is only detected after max_tokens extra seconds) hang through devnode `POST /control`, a
different pair each cycle, so at least one node always serves. Every answer is checked exactly:

* text completions send the raw prompt to every node kind, and the devnode's text continues exactly from
  any prefix, so the answer must equal `generate_tokens(prompt, max_tokens)` even when a node died mid-answer
  and another finished it: anything repeated or lost shows;
* chat answers must equal one of the two valid answers (the gateway's rendered template for Petals/Plumise
  nodes, the devnode's own prompt for OpenAI-type nodes; see compat_tests/support.py);
* every stream ends with a finish_reason, a usage chunk, and `[DONE]`, with no in-band error;
* `usage` is the prompt's token count plus exactly `max_tokens`;
* afterwards every node's in-flight count (the devnode's and the gateway's view of it) returns to zero.

`run_chaos` is shared by tests/reliability/test_chaos.py (modest numbers) and `python -m bench.chaos`
(benchmark size, by hand). Failures are collected, not raised, so one run reports all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from openai_proxy.catalog import load_catalog
from openai_proxy.devnode import generate_tokens
from openai_proxy.templates import ChatMessage, get_template
from openai_proxy.tokens import TokenCounter

from ..conftest import sse_payloads
from .processes import Proc, ProcessSet, bearer, wallet

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
KINDS = ("completion-stream", "chat-stream", "completion", "chat")


@dataclass
class ChaosConfig:
    clients: int = 30
    requests: int = 10  # per client
    tokens: int = 20  # max_tokens of every request (the devnode never stops early)
    token_delay: float = 0.005
    cycle_seconds: float = 1.5  # one kill + restart and one hang + release per cycle
    hang_seconds: float = 1.0
    warmup_seconds: float = 0.3  # traffic before the first fault
    # FIRST_TOKEN_TIMEOUT and TOKEN_IDLE_TIMEOUT: short, so hangs are found fast, but not so short that a
    # healthy node starved of CPU (2 cores, 5 busy processes) looks hung.
    node_timeout: float = 2.0
    seed: int = 7


@dataclass
class ChaosReport:
    requests: int = 0
    streams: int = 0
    kills: int = 0
    hangs: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failovers: float = 0.0
    continuations: float = 0.0
    slowest: float = 0.0

    def summary(self) -> str:
        return (f"chaos: {self.requests} requests ({self.streams} streams) in {self.seconds:.1f} s; "
                f"{self.kills} SIGKILL+restarts, {self.hangs} hangs; gateway failovers {self.failovers:g}, "
                f"continuations {self.continuations:g}; slowest request {self.slowest:.2f} s; "
                f"client-visible errors {len(self.failures)}")


class Expectations:
    """What a correct answer is, for any node the pool may pick."""

    def __init__(self, tokens: int) -> None:
        spec = load_catalog(None).get(MODEL)
        assert spec is not None
        self.template = get_template(spec.template)
        self.counter = TokenCounter()
        self.tokens = tokens

    def completion(self, prompt: str) -> tuple[set[str], int]:
        return {"".join(generate_tokens(prompt, self.tokens))}, self.counter.count(prompt)

    def chat(self, content: str) -> tuple[set[str], int]:
        rendered = self.template.render([ChatMessage(role="user", content=content)])
        devnode_own = content + "\n"  # the OpenAI-type devnode joins message texts with newlines
        answers = {"".join(generate_tokens(p, self.tokens)) for p in (rendered, devnode_own)}
        return answers, self.counter.count(rendered)


def check_usage(usage: Any, prompt_tokens: int, tokens: int) -> str | None:
    want = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    return None if usage == want else f"usage {usage} != {want}"


def check_stream(body: str, chat: bool, answers: set[str], prompt_tokens: int, tokens: int) -> str | None:
    payloads = sse_payloads(body)
    if not payloads or payloads[-1] != "[DONE]":
        return f"stream does not end with [DONE]: {body[-300:]!r}"
    chunks = [json.loads(p) for p in payloads[:-1]]
    if errors := [c for c in chunks if "error" in c]:
        return f"in-band error: {errors[0]}"
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    text = "".join((ch["delta"].get("content") or "") if chat else ch["text"] for ch in choices)
    finishes = [ch["finish_reason"] for ch in choices if ch["finish_reason"] is not None]
    if finishes != ["length"]:
        return f"finish reasons {finishes}"
    if text not in answers:
        return f"text {text!r} is none of {answers}"
    return check_usage(chunks[-1].get("usage"), prompt_tokens, tokens)


def check_whole(data: dict[str, Any], chat: bool, answers: set[str], prompt_tokens: int, tokens: int) -> str | None:
    choice = data["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    if choice["finish_reason"] != "length":
        return f"finish_reason {choice['finish_reason']}"
    if text not in answers:
        return f"text {text!r} is none of {answers}"
    return check_usage(data["usage"], prompt_tokens, tokens)


async def one_request(http: httpx.AsyncClient, base: str, expect: Expectations, kind: str, tag: str) -> str | None:
    chat, stream = kind.startswith("chat"), kind.endswith("stream")
    content = f"Chaos {tag}:"
    body: dict[str, Any] = {"model": MODEL, "max_tokens": expect.tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": content}]
        answers, prompt_tokens = expect.chat(content)
    else:
        body["prompt"] = content
        answers, prompt_tokens = expect.completion(content)
    response = await http.post(f"{base}/v1/{'chat/completions' if chat else 'completions'}", json=body)
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if stream:
        return check_stream(response.text, chat, answers, prompt_tokens, expect.tokens)
    return check_whole(response.json(), chat, answers, prompt_tokens, expect.tokens)


async def client(http: httpx.AsyncClient, base: str, expect: Expectations, number: int, config: ChaosConfig,
                 report: ChaosReport) -> None:
    for i in range(config.requests):
        kind = KINDS[(number + i) % len(KINDS)]
        started = time.monotonic()
        try:
            problem = await one_request(http, base, expect, kind, f"client {number} request {i}")
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        report.slowest = max(report.slowest, time.monotonic() - started)
        report.requests += 1
        report.streams += kind.endswith("stream")
        if problem:
            report.failures.append(f"client {number} request {i} ({kind}): {problem}")


async def set_fault(node: Proc, fault: str) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        (await http.post(f"{node.url}/control", json={"fault": fault})).raise_for_status()


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Pace the fault schedule (not a wait for a condition): returns early once the clients are done."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def controller(nodes: list[Proc], stop: asyncio.Event, config: ChaosConfig, report: ChaosReport) -> None:
    """Each cycle: SIGKILL one node and restart it; meanwhile hang a streaming node that is not the victim."""
    rng = random.Random(config.seed)
    streaming = nodes[:2]  # petals+ws and openai+http
    await pause(stop, config.warmup_seconds)  # streams must be running on the first victim
    cycle = 0
    while not stop.is_set():
        victim = nodes[cycle % len(nodes)]
        hung = rng.choice([n for n in streaming if n is not victim])
        victim.kill()
        report.kills += 1
        victim.spawn()  # down until its imports are done: about a second, more on a loaded machine
        await set_fault(hung, "hang")
        report.hangs += 1
        await pause(stop, config.hang_seconds)
        await set_fault(hung, "none")
        await victim.wait_ready()  # never two nodes down at once: the next victim waits for this one
        # A request that met this cycle's kill and hang must finish on the third node before the next kill:
        # three different failures within one request's attempts would be a fault budget no pool can absorb.
        await pause(stop, max(config.cycle_seconds - config.hang_seconds, config.node_timeout + 1.0))
        cycle += 1


def metric_values(text: str, name: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")]


async def settle(nodes: list[Proc], gateway: Proc, report: ChaosReport) -> None:
    """After the run: every node's in-flight count (devnode and gateway views) back to zero."""
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            counts = [(await http.get(f"{n.url}/control")).json()["in_flight"] for n in nodes]
            metrics = (await http.get(f"{gateway.url}/metrics")).text
            pool = metric_values(metrics, "openai_proxy_node_in_flight")
            if not any(counts) and not any(pool):
                break
            if time.monotonic() > deadline:
                report.failures.append(f"in-flight counts stuck: devnodes {counts}, gateway {pool}")
                break
            await asyncio.sleep(0.05)
        report.failovers = sum(metric_values(metrics, "openai_proxy_failovers_total"))
        report.continuations = sum(metric_values(metrics, "openai_proxy_continuations_total"))


async def run_chaos(procs: ProcessSet, config: ChaosConfig) -> ChaosReport:
    delay = ("--token-delay", str(config.token_delay))
    nodes = [procs.devnode(*delay) for _ in range(3)]
    pro = wallet()
    urls = [f"petals+ws://127.0.0.1:{nodes[0].port}", f"openai+http://127.0.0.1:{nodes[1].port}",
            f"http://127.0.0.1:{nodes[2].port}"]
    gateway = procs.gateway(  # started with the nodes: it takes them into rotation as their health checks pass
        urls, pro_addresses=[pro], first_token_timeout=config.node_timeout, token_idle_timeout=config.node_timeout,
        node_cooldown_seconds=0.5, health_check_interval=0.2, node_max_attempts=3, log_level="info",
    )
    await asyncio.gather(*(node.wait_ready() for node in nodes))
    await gateway.wait_ready("/ready")
    report, stop, expect = ChaosReport(), asyncio.Event(), Expectations(config.tokens)
    limits = httpx.Limits(max_connections=config.clients, max_keepalive_connections=config.clients)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=bearer(pro)) as http:
        chaos = asyncio.create_task(controller(nodes, stop, config, report))
        started = time.monotonic()
        try:
            await asyncio.gather(*(client(http, gateway.url, expect, c, config, report)
                                   for c in range(config.clients)))
        finally:
            report.seconds = time.monotonic() - started
            stop.set()
            await chaos
    await settle(nodes, gateway, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="The chaos run at benchmark size (see tests/reliability).")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--token-delay", type=float, default=0.005)
    parser.add_argument("--node-timeout", type=float, default=5.0,
                        help="FIRST_TOKEN_TIMEOUT / TOKEN_IDLE_TIMEOUT: above what an overloaded healthy node needs")
    args = parser.parse_args()
    config = ChaosConfig(clients=args.clients, requests=args.requests, tokens=args.tokens,
                         token_delay=args.token_delay, node_timeout=args.node_timeout)
    procs = ProcessSet(Path(tempfile.mkdtemp(prefix="chaos-")))
    try:
        report = asyncio.run(run_chaos(procs, config))
    finally:
        procs.close()
    print(report.summary())
    for failure in report.failures[:20]:
        print("  ", failure)
    print(f"logs: {procs.workdir}")
    raise SystemExit(1 if report.failures else 0)
