"""Which nodes exist, which can serve now, and how they got there: static, Oracle, relay; health checks.

One `Node` per node address. Static NODE_URLS entries are keyed by URL until the Oracle (or a relay agent's
signature) ties an address to them; Oracle entries and relay agents are keyed by address, so an HTTP node
and a relay agent of the same address are one entry with one set of counters (upstream §11 item 8).
Discovered nodes join out of rotation and serve only after their own /health says ok (§11 item 7; a
`{"status": "loading"}` answer is not ok).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from ..errors import NoHealthyNode
from ..settings import Settings
from .base import NodeClient, NodeFailure
from .node import UNKNOWN_CAPACITY, Node
from .relay import AgentConnection, RelayClient, RelayHub

log = logging.getLogger("openai_proxy.nodes")

# A relay-only node whose agent has been gone this long is forgotten (its counters with it).
RELAY_FORGET_SECONDS = 600.0


class NodeRegistry:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.nodes: dict[str, Node] = {}
        self.relay = RelayHub()
        self.benchmarks: dict[str, float] = {}  # lower-case address → Oracle benchmark tokens/s
        # catalogue id → the name nodes know it by, where the two differ (set from the catalogue at start)
        self.node_names: dict[str, str] = {}

    # --- lookup -------------------------------------------------------------------------------------------

    def by_address(self, address: str, *, verified_only: bool = False) -> Node | None:
        address = address.lower()
        for node in self.nodes.values():
            if node.address == address and (node.address_verified or not verified_only):
                return node
        return None

    def by_url(self, url: str) -> Node | None:
        for node in self.nodes.values():
            if node.client is not None and node.client.url == url:
                return node
        return None

    def candidates(self, model: str, exclude: set[Node] | frozenset[Node] = frozenset()) -> list[Node]:
        now = self.clock()
        node_model = self.node_names.get(model)
        return [n for n in self.nodes.values()
                if n not in exclude and not n.cooling(now) and n.route(model, node_model) is not None]

    def route(self, node: Node, model: str) -> NodeClient | None:
        return node.route(model, self.node_names.get(model))

    def require_candidates(self, model: str) -> None:
        if not self.candidates(model):
            raise NoHealthyNode(f"No healthy node serves '{model}' right now. Try again shortly.")

    def serving_models(self) -> set[str]:
        now = self.clock()
        models: set[str] = set()
        for node in self.nodes.values():
            if node.healthy and not node.cooling(now):
                models |= node.models() or set()
        return models

    def is_cooling(self, node: Node) -> bool:
        return node.cooling(self.clock())

    # --- static nodes and the Oracle ----------------------------------------------------------------------

    def add(self, client: NodeClient, *, models: Iterable[str] | None = None, healthy: bool = False) -> Node:
        """A static node (NODE_URLS): the operator's choice, in rotation once its health check passes.

        Keyed by its URL; the same host listed with two protocols (`http://h`, `petals+http://h`) is two
        nodes, the second keyed `<kind>+<url>`."""
        key = client.url if client.url not in self.nodes else f"{client.kind}+{client.url}"
        node = Node(key=key, client=client, health_ok=healthy,
                    configured_models=frozenset(models) if models is not None else None)
        self.nodes[key] = node
        return node

    def upsert_discovered(
        self, address: str, client: NodeClient, models: frozenset[str] | None, capacity: float | None
    ) -> Node | None:
        """Merge one Oracle listing; returns the node when it needs a health check before it may serve."""
        address = address.lower()
        if capacity:
            self.benchmarks[address] = capacity
        node = self.by_address(address, verified_only=True) or self.by_url(client.url)
        if node is None:
            node = Node(key=address, client=client, source="oracle", address=address, address_verified=True,
                        configured_models=models, capacity=capacity or UNKNOWN_CAPACITY)
            self.nodes[address] = node
            return node
        node.address, node.address_verified = address, True
        if models is not None:
            node.configured_models = models
        if capacity:
            node.capacity = capacity
        if node.client is None or (node.source != "static" and node.client.url != client.url):
            node.client, node.health_ok = client, False  # a new endpoint proves itself first
            node.source = "oracle" if node.source == "relay" else node.source
            return node
        return None

    def set_capacity(self, address: str, capacity: float) -> None:
        """The Oracle's benchmark for `address`, for its node now and for a relay agent that dials in later."""
        address = address.lower()
        self.benchmarks[address] = capacity
        node = self.by_address(address, verified_only=True)
        if node is not None:
            node.capacity = capacity

    def forget_discovered(self, listed: set[str]) -> None:
        """Drop Oracle nodes the Oracle no longer lists (their relay agent, if connected, stays)."""
        for key, node in list(self.nodes.items()):
            if node.source != "oracle" or node.address in listed:
                continue
            if node.relay is not None:
                node.client, node.health_ok, node.source = None, False, "relay"
            else:
                del self.nodes[key]

    # --- relay agents -------------------------------------------------------------------------------------

    def connect_agent(self, conn: AgentConnection) -> None:
        """Register an authenticated agent (closing the connection it replaces) and put it in rotation."""
        self.relay.register(conn)
        node = self.by_address(conn.address)
        if node is None:
            node = Node(key=conn.address, source="relay", address=conn.address,
                        capacity=self.benchmarks.get(conn.address, UNKNOWN_CAPACITY))
            self.nodes[conn.address] = node
        node.address_verified = True
        if node.relay is None:
            node.relay = RelayClient(self.relay, conn.address)
        node.relay_model, node.relay_gone_at = conn.model, None

    def disconnect_agent(self, conn: AgentConnection) -> None:
        """The agent's socket closed: fail its pending requests; leave rotation unless it was replaced."""
        if not self.relay.unregister(conn):
            return  # a newer connection for this address is live: it keeps the node
        node = self.by_address(conn.address)
        if node is not None:
            node.relay, node.relay_gone_at = None, self.clock()

    def prune_relays(self) -> None:
        now = self.clock()
        for key, node in list(self.nodes.items()):
            gone = node.relay_gone_at
            if node.client is None and node.relay is None and gone is not None and now - gone > RELAY_FORGET_SECONDS:
                del self.nodes[key]

    # --- health -------------------------------------------------------------------------------------------

    async def check_health(self) -> None:
        await self.check_nodes(list(self.nodes.values()))

    async def check_nodes(self, nodes: Iterable[Node]) -> None:
        await asyncio.gather(*(self._check_node(node) for node in nodes if node.client is not None))

    async def _check_node(self, node: Node) -> None:
        client = node.client
        assert client is not None
        try:
            async with asyncio.timeout(self.settings.node_connect_timeout):
                health = await client.health()
        except (NodeFailure, TimeoutError) as exc:
            if node.health_ok:
                log.warning("node %s failed its health check: %s", client.url, exc)
            ok = False
        else:
            ok = health.ready
            node.reported_model = health.model
            if health.address and not node.address_verified:
                node.address = health.address.lower()  # for attribution only: it does not merge entries
        if node.client is client:  # the Oracle may have moved the node meanwhile
            if ok and not node.health_ok:
                log.info("node %s is in rotation", client.url)
            node.health_ok = ok
        node.last_health_check = time.time()

    async def run_health_checks(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval)
            self.prune_relays()
            await self.check_health()
