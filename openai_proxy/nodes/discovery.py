"""Node discovery from the Plumise Oracle (upstream-protocols.md §4.1, §6.4), merged into the pool by address.

Each poll reads three Oracle endpoints at once, each with a timeout:

* `GET /api/nodes` — the node list: `address`, `endpoint`, `capabilities` (model ids);
* `GET /api/v1/metrics/capacity` — benchmark tokens/s per address, the routing capacity;
* `GET /api/v1/pipeline/topology?model=<id>` per catalogue model — standalone rows and pipeline heads
  (`pipelineOrder` 0) that are `ready` can serve that model alone; other pipeline stages cannot.

The node list decides membership: when it cannot be read, the poll changes nothing (an Oracle outage keeps
the last known pool); a failed capacity or topology read reuses the last good one. Every URL passes the SSRF
filter on every poll. New nodes and moved endpoints are health-checked at once, and serve only once their own
/health says ok.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import httpx

from .. import jsonsafe
from ..settings import Settings
from .base import NodeClient
from .clients import client_for_url
from .registry import NodeRegistry
from .ssrf import Resolver, UnsafeNodeURL, check_node_url, system_resolver

log = logging.getLogger("openai_proxy.discovery")

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
STANDALONE_ORDER = 999  # the Oracle's pipelineOrder for a node that holds every layer
MAX_REMEMBERED_REFUSALS = 1000  # refused URLs are logged once each; the memory of them stays bounded


@dataclass
class Listing:
    """One node as the Oracle describes it, merged across its endpoints."""

    address: str
    url: str | None = None
    models: set[str] = field(default_factory=set)


class OracleDiscovery:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        registry: NodeRegistry,
        models: Sequence[str],
        *,
        resolver: Resolver = system_resolver,
    ) -> None:
        assert settings.oracle_api_url, "discovery needs ORACLE_API_URL"
        self.settings = settings
        self.base = settings.oracle_api_url.rstrip("/")
        self.http = http
        self.registry = registry
        self.models = tuple(models)
        self.resolver = resolver
        self.capacity: dict[str, float] = {}
        self.topology: dict[str, list[dict[str, Any]]] = {}  # last good rows per model
        self.reachable: bool | None = None
        self._refused: set[str] = set()

    async def run(self) -> None:
        """Poll now, then every ORACLE_POLL_INTERVAL seconds, until cancelled."""
        while True:
            try:
                await self.poll()
            except Exception:  # boundary: a bug in one poll must not end discovery for the process's life
                log.exception("Oracle poll failed")
            await asyncio.sleep(self.settings.oracle_poll_interval)

    async def poll(self) -> bool:
        """One poll; False when the Oracle's node list could not be read (nothing changed then)."""
        nodes, capacity, *topologies = await asyncio.gather(
            self._get("/api/nodes"),
            self._get("/api/v1/metrics/capacity"),
            *(self._get("/api/v1/pipeline/topology", {"model": model}) for model in self.models),
        )
        self._note_reachable(nodes is not None)
        self._read_capacity(capacity)
        for model, topology in zip(self.models, topologies, strict=True):
            rows = topology.get("nodes") if isinstance(topology, dict) else None
            if isinstance(rows, list):
                self.topology[model] = [row for row in rows if isinstance(row, dict)]
        if not isinstance(nodes, dict) or not isinstance(nodes.get("nodes"), list):
            return False
        listings = self._merge(nodes["nodes"])
        if nodes["nodes"] and not any(isinstance(e, dict) and _is_address(e.get("address")) for e in nodes["nodes"]):
            return False  # a list of nothing but garbage is not "no nodes": keep the last good list
        await self._apply(listings)
        return True

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = await self.http.get(f"{self.base}{path}", params=params,
                                           timeout=self.settings.oracle_timeout)
        except httpx.HTTPError as exc:
            log.debug("Oracle %s: %s", path, exc)
            return None
        if response.status_code != 200:
            log.debug("Oracle %s: HTTP %d", path, response.status_code)
            return None
        try:
            return jsonsafe.loads(response.content)
        except ValueError:
            log.warning("Oracle %s answered something that is not JSON", path)
            return None

    def _note_reachable(self, ok: bool) -> None:
        if ok != self.reachable:
            if ok:
                log.info("Oracle %s reachable", self.base)
            else:
                log.warning("Oracle %s unreachable: keeping the last known nodes", self.base)
        self.reachable = ok

    def _read_capacity(self, data: Any) -> None:
        if not isinstance(data, list):
            return
        for entry in data:
            if not isinstance(entry, dict):
                continue
            address, benchmark = entry.get("address"), entry.get("benchmarkTokPerSec")
            if _is_address(address) and _positive(benchmark):
                self.capacity[address.lower()] = float(benchmark)

    def _merge(self, nodes: list[Any]) -> dict[str, Listing]:
        listings: dict[str, Listing] = {}
        for entry in nodes:
            if not isinstance(entry, dict) or not _is_address(entry.get("address")):
                continue
            listing = listings.setdefault(entry["address"].lower(), Listing(entry["address"].lower()))
            endpoint = entry.get("endpoint")
            if isinstance(endpoint, str) and endpoint.strip():
                listing.url = endpoint.strip()
            capabilities = entry.get("capabilities")
            if isinstance(capabilities, list):
                listing.models.update(c for c in capabilities if isinstance(c, str) and c)
        for model, rows in self.topology.items():
            for row in rows:
                self._merge_row(listings, model, row)
        return listings

    def _merge_row(self, listings: dict[str, Listing], model: str, row: dict[str, Any]) -> None:
        address = row.get("nodeAddress") or row.get("address")
        order, endpoint = row.get("pipelineOrder"), row.get("httpEndpoint")
        if not _is_address(address) or row.get("ready") is not True or order not in (0, STANDALONE_ORDER):
            return  # not ready, or a middle stage of a pipeline: it cannot answer alone
        if _positive(row.get("benchmarkTokPerSec")):
            self.capacity[address.lower()] = float(row["benchmarkTokPerSec"])
        listing = listings.setdefault(address.lower(), Listing(address.lower()))
        if listing.url is None and isinstance(endpoint, str) and endpoint.strip():
            listing.url = endpoint.strip()
        listing.models.add(model)

    async def _apply(self, listings: dict[str, Listing]) -> None:
        usable = [listing for listing in listings.values() if listing.url]
        clients = await asyncio.gather(*(self._client(listing.url or "") for listing in usable))
        fresh, listed = [], set()
        for listing, client in zip(usable, clients, strict=True):
            if client is None:
                continue
            listed.add(listing.address)
            models = frozenset(listing.models) or None
            node = self.registry.upsert_discovered(listing.address, client, models,
                                                   self.capacity.get(listing.address))
            if node is not None:
                fresh.append(node)
        self.registry.forget_discovered(listed)
        for address, benchmark in self.capacity.items():
            self.registry.set_capacity(address, benchmark)
        if fresh:
            await self.registry.check_nodes(fresh)

    async def _client(self, url: str) -> NodeClient | None:
        """A client for an Oracle URL that passes the SSRF filter, else None (logged once per URL)."""
        settings = self.settings
        try:
            await check_node_url(url, allow_loopback=settings.allow_loopback_nodes,
                                 allow_private=settings.allow_private_ips, resolver=self.resolver,
                                 resolve_seconds=settings.oracle_timeout)
            # http(s): the Plumise node API every Plumise node serves; ws(s): the Petals WebSocket API.
            scheme = "petals+" if url.lower().startswith(("ws://", "wss://")) else ""
            return client_for_url(scheme + url, self.http, timeout=settings.node_connect_timeout)
        except (UnsafeNodeURL, ValueError) as exc:
            if url not in self._refused:
                if len(self._refused) > MAX_REMEMBERED_REFUSALS:
                    self._refused.clear()
                self._refused.add(url)
                log.warning("refusing node URL from the Oracle: %s", exc)
            return None


def _is_address(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and _ADDRESS.fullmatch(value) is not None


def _positive(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
