"""The gateway's long-lived objects, as one typed value the lifespan creates and every handler reads."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from starlette.requests import HTTPConnection, Request

from .. import telemetry
from ..auth.guard import Authenticator
from ..auth.principal import Principal
from ..auth.signin import SignInService
from ..catalog import Catalog
from ..chain import ChainServices
from ..errors import ClientClosedRequest, ServerError
from ..limits import Admission, RateLimiter
from ..nodes.pool import NodePool
from ..reports import ReportInbox
from ..service import ChoiceResult, InferenceService, Plan, Usage
from ..settings import Settings
from ..store import StateStore
from ..tokens import TokenCounter
from .disconnect import ClientGone, run_while_connected
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
    chain: ChainServices | None = None  # on-chain tiers and credits; None when the chain is off
    reports: ReportInbox = field(default_factory=ReportInbox)  # agent reports from /api/v1/report

    async def authenticate(self, connection: HTTPConnection) -> Principal:
        principal = await self.auth.principal(connection.headers.get("authorization"))
        telemetry.note_principal(principal.tier, principal.short)
        return principal

    @asynccontextmanager
    async def admit(self, principal: Principal, plan: Plan) -> AsyncGenerator[Admission, None]:
        """Check a node can serve the plan, then admit it; a failure on our side is refunded. The slot is
        keyed by the current `request_id_var`: the request's, or a fresh one a Socket.IO message binds."""
        telemetry.note_model(plan.model.id)
        self.service.require_nodes(plan)
        admission = await self.limiter.admit(principal, request_id_var.get())
        telemetry.note_admitted(plan.prompt_tokens, plan.prompts if self.settings.log_prompts else None)
        try:
            yield admission
        except ServerError:
            await admission.refund()
            raise


    async def complete(
        self, request: Request, plan: Plan, admission: Admission
    ) -> tuple[list[ChoiceResult], Usage]:
        """A non-streaming answer, with its usage recorded. A client that hangs up first cancels the node
        requests at once (volunteers' GPUs are not spent on answers nobody will read), and the tokens the
        nodes produced until then are still recorded; then ClientClosedRequest."""
        results = self.service.new_results(plan)
        try:
            _, usage = await run_while_connected(request.receive, self.service.complete(plan, results))
        except ClientGone:
            await admission.record(self.service.usage(plan, results))
            raise ClientClosedRequest from None
        await admission.record(usage)  # a node failure raised above instead, and `admit` refunds it
        return results, usage


def gateway(connection: HTTPConnection) -> Gateway:
    gw: Gateway = connection.state.gateway
    return gw
