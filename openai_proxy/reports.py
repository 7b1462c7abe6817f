"""Reports: usage this gateway sends to the Oracle, and agent reports it receives on /api/v1/report.

Outgoing (upstream-protocols.md §6.1, §11 items 13, 27, 28): per serving node address, cumulative tokens,
requests, average latency and uptime, posted to `{ORACLE_API_URL}/api/metrics` with `x-api-key` every
USAGE_REPORT_INTERVAL seconds. `record` is a dict update on the request path; all I/O happens in the reporter's
own task. Counts are cumulative and never reset by sending, so an Oracle outage loses nothing: the next
report that gets through carries everything. A node idle for over 60 s is dropped, but only once the Oracle
has acknowledged its final counts. Timestamps are unix seconds, strictly increasing per node (the Oracle
rejects a repeated one as a replay). With PRIVATE_KEY, each report is signed (EIP-191) over the compact JSON
`{"agent","processed_tokens","timestamp"}` the Oracle verifies; without it, `signature` is "internal".

Incoming (§1.7): `ReportInbox` keeps agent reports for five minutes; `available_models` says which models
live reports cover, for the model listings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account import Account

from .auth.wallet import sign_personal
from .nodes.node import Node
from .protocol import AgentReport
from .settings import Settings

log = logging.getLogger("openai_proxy.reports")

IDLE_SECONDS = 60.0
REPORT_TIMEOUT = 5.0


@dataclass
class _Usage:
    """One node address's cumulative usage since it was first recorded (or last dropped as idle)."""

    started: int  # unix seconds
    last_recorded: float  # monotonic
    tokens: int = 0
    requests: int = 0
    latency_ms: float = 0.0
    last_timestamp: int = 0
    delivered: tuple[int, int] = (0, 0)  # (tokens, requests) the Oracle has acknowledged


class UsageReporter:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        assert settings.oracle_api_url and settings.oracle_api_key, "reports need ORACLE_API_URL and ORACLE_API_KEY"
        self.url = settings.oracle_api_url.rstrip("/") + "/api/metrics"
        self.api_key = settings.oracle_api_key.get_secret_value()
        self.interval = settings.usage_report_interval
        self.http = http
        self.clock = clock
        self.wall = wall
        self.key = settings.private_key.get_secret_value() if settings.private_key else None
        if self.key is not None:
            Account.from_key(self.key)  # fail at startup, not at the first report, on a malformed key
        self.usage: dict[str, _Usage] = {}
        self.sent = 0
        self.failed = 0

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return bool(settings.oracle_api_url and settings.oracle_api_key)

    def record(self, address: str, tokens: int, seconds: float) -> None:
        """Count one served request; O(1) and never blocks (called on the request path)."""
        address = address.lower()
        usage = self.usage.get(address)
        if usage is None:
            usage = self.usage[address] = _Usage(started=int(self.wall()), last_recorded=self.clock())
        usage.tokens += tokens
        usage.requests += 1
        usage.latency_ms += seconds * 1000
        usage.last_recorded = self.clock()

    def served(self, node: Node, tokens: int, seconds: float) -> None:
        """The pool's `served` hook: nodes without a known address cannot be credited and are skipped."""
        if node.address:
            self.record(node.address, tokens, seconds)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.report()
            except Exception:  # boundary: one bad round must not end reporting for the process's life
                log.exception("usage report round failed")

    async def flush(self) -> None:
        """A last round at shutdown, bounded so a dead Oracle cannot hold the process up."""
        try:
            async with asyncio.timeout(REPORT_TIMEOUT + 1):
                await self.report()
        except TimeoutError:
            log.warning("final usage report did not finish in time")

    async def report(self) -> None:
        """One round: drop idle nodes whose counts were delivered, post the others (concurrently)."""
        now = self.clock()
        for address, usage in list(self.usage.items()):
            if now - usage.last_recorded > IDLE_SECONDS and usage.delivered == (usage.tokens, usage.requests):
                del self.usage[address]
        bodies = [(address, usage, self._body(address, usage)) for address, usage in self.usage.items()]
        if self.key is not None and bodies:
            # Signing costs milliseconds of pure Python each: keep it off the event loop.
            signatures = await asyncio.to_thread(self._sign_all, [body for _, _, body in bodies])
            for (_, _, body), signature in zip(bodies, signatures, strict=True):
                body["signature"] = signature
        await asyncio.gather(*(self._post(usage, body) for _, usage, body in bodies))

    def _body(self, address: str, usage: _Usage) -> dict[str, Any]:
        now = int(self.wall())
        usage.last_timestamp = max(now, usage.last_timestamp + 1)
        return {
            "wallet": address,
            "tokensProcessed": usage.tokens,
            "requestCount": usage.requests,
            "avgLatencyMs": round(usage.latency_ms / usage.requests) if usage.requests else 0,
            "uptimeSeconds": max(0, now - usage.started),
            "timestamp": usage.last_timestamp,
            "signature": "internal",
        }

    def _sign_all(self, bodies: list[dict[str, Any]]) -> list[str]:
        assert self.key is not None
        return [sign_personal(signed_message(b["wallet"], b["tokensProcessed"], b["timestamp"]), self.key)
                for b in bodies]

    async def _post(self, usage: _Usage, body: dict[str, Any]) -> None:
        counts = (body["tokensProcessed"], body["requestCount"])
        try:
            response = await self.http.post(self.url, json=body, headers={"x-api-key": self.api_key},
                                            timeout=REPORT_TIMEOUT)
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("usage report for %s failed: %s", body["wallet"], type(exc).__name__)
            return
        if response.status_code >= 300:
            self.failed += 1
            log.warning("usage report for %s refused: HTTP %d %s", body["wallet"], response.status_code,
                        response.text[:200])
            return
        self.sent += 1
        usage.delivered = counts


def signed_message(wallet: str, tokens: int, timestamp: int) -> str:
    """The exact text the Oracle verifies: JS `JSON.stringify({agent, processed_tokens, timestamp})`."""
    return json.dumps({"agent": wallet, "processed_tokens": tokens, "timestamp": timestamp}, separators=(",", ":"))


# --- incoming agent reports -----------------------------------------------------------------------------


class ReportInbox:
    """Agent reports by agentId, each kept for `ttl` seconds after it arrived."""

    def __init__(self, *, ttl: float = 300.0, capacity: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self._reports: dict[str, tuple[float, AgentReport]] = {}

    def add(self, report: AgentReport) -> None:
        self._reports.pop(report.agentId, None)  # re-insert, so the dict stays ordered by arrival
        self._reports[report.agentId] = (self.clock(), report)
        while len(self._reports) > self.capacity:
            del self._reports[next(iter(self._reports))]

    def reports(self) -> list[AgentReport]:
        """The live reports, oldest first."""
        cutoff = self.clock() - self.ttl
        for agent_id, (received, _) in list(self._reports.items()):
            if received >= cutoff:
                break
            del self._reports[agent_id]
        return [report for _, report in self._reports.values()]

    def available_models(self) -> dict[str, int]:
        """Model id → number of live agent reports that list it (the original's `nodes` count)."""
        counts: dict[str, int] = {}
        for report in self.reports():
            for model in set(report.models):
                counts[model] = counts.get(model, 0) + 1
        return counts
