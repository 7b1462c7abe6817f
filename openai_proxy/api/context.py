"""The gateway's long-lived objects, as one typed value the lifespan creates and every handler reads."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.requests import HTTPConnection

from ..auth.guard import Authenticator
from ..auth.principal import Principal
from ..catalog import Catalog
from ..errors import ServerError
from ..nodes.pool import NodePool
from ..service import InferenceService, Plan, Usage
from ..settings import Settings
from ..tokens import TokenCounter
from .sse import EventStreamResponse


class Admission:
    """One admitted request: what it may report back when it ends (usage) or fails on our side (refund)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def record(self, usage: Usage) -> None:
        pass

    async def refund(self) -> None:
        pass

    def stream(self, body: AsyncGenerator[bytes, None], keepalive: float) -> EventStreamResponse:
        return EventStreamResponse(body, keepalive=keepalive, headers=self.headers)


@dataclass
class Gateway:
    settings: Settings
    catalog: Catalog
    counter: TokenCounter
    http: httpx.AsyncClient
    pool: NodePool
    service: InferenceService
    auth: Authenticator

    async def authenticate(self, connection: HTTPConnection) -> Principal:
        return self.auth.principal(connection.headers.get("authorization"))

    @asynccontextmanager
    async def admit(
        self, connection: HTTPConnection, principal: Principal, plan: Plan
    ) -> AsyncGenerator[Admission, None]:
        """Check a node can serve the plan, then admit it; a failure on our side is refunded."""
        self.service.require_nodes(plan)
        admission = Admission()
        try:
            yield admission
        except ServerError:
            await admission.refund()
            raise


def gateway(connection: HTTPConnection) -> Gateway:
    gw: Gateway = connection.state.gateway
    return gw
