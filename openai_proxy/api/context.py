"""The gateway's long-lived objects, as one typed value the lifespan creates and every handler reads."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.requests import HTTPConnection

from ..auth.guard import Authenticator
from ..auth.principal import Principal
from ..auth.signin import SignInService
from ..catalog import Catalog
from ..errors import ServerError
from ..limits import Admission, RateLimiter
from ..nodes.pool import NodePool
from ..service import InferenceService, Plan
from ..settings import Settings
from ..store import StateStore
from ..tokens import TokenCounter
from .middleware import request_id_var


@dataclass
class Gateway:
    settings: Settings
    catalog: Catalog
    counter: TokenCounter
    http: httpx.AsyncClient
    pool: NodePool
    service: InferenceService
    auth: Authenticator
    store: StateStore
    limiter: RateLimiter
    signin: SignInService

    async def authenticate(self, connection: HTTPConnection) -> Principal:
        return await self.auth.principal(connection.headers.get("authorization"))

    @asynccontextmanager
    async def admit(
        self, connection: HTTPConnection, principal: Principal, plan: Plan
    ) -> AsyncGenerator[Admission, None]:
        """Check a node can serve the plan, then admit it; a failure on our side is refunded."""
        self.service.require_nodes(plan)
        admission = await self.limiter.admit(principal, request_id_var.get())
        try:
            yield admission
        except ServerError:
            await admission.refund()
            raise


def gateway(connection: HTTPConnection) -> Gateway:
    gw: Gateway = connection.state.gateway
    return gw
