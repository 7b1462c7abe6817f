"""`create_app(settings)`: the one composition root. Routes, middleware, error rendering, and the lifespan
that owns every long-lived object (HTTP client, node pool, background tasks) and closes it on exit."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from . import metrics as metrics_api
from .api import auth, docs, health, legacy, openai
from .api import nodes as nodes_api
from .api import payment as payment_api
from .api import relay as relay_api
from .api import report as report_api
from .api.context import Gateway
from .api.middleware import RequestContextMiddleware
from .api.socketio import InferenceSockets
from .auth.guard import Authenticator, parse_service_keys
from .auth.jwt import TokenService
from .auth.signin import SignInService
from .auth.tiers import TierResolver
from .catalog import load_catalog
from .chain import build_chain
from .errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound
from .limits import RateLimiter
from .metrics import Metrics
from .nodes.clients import client_for_url
from .nodes.clients.http import node_session
from .nodes.discovery import OracleDiscovery
from .nodes.pool import NodePool
from .reports import UsageReporter
from .service import InferenceService
from .settings import Settings
from .store import create_store
from .tokens import TokenCounter

log = logging.getLogger("openai_proxy")

EXPOSED_HEADERS = [
    "x-request-id",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "retry-after",
]


# The modules whose `operations` document their routes in /openapi.json (tests/test_docs.py checks that
# every route of the app is documented).
API_MODULES = (health, openai, auth, payment_api, legacy, metrics_api, nodes_api, report_api)


class ConfigurationError(RuntimeError):
    """The settings cannot run a gateway; the message says which setting to change."""


def check_settings(settings: Settings) -> None:
    if settings.jwt_secret is None or not settings.jwt_secret.get_secret_value():
        raise ConfigurationError("JWT_SECRET is not set: set it to a long random string (e.g. `openssl rand -hex 32`).")
    if not (settings.all_node_urls or settings.oracle_api_url):
        raise ConfigurationError(
            "No nodes configured: set NODE_URLS (comma list of node URLs), PETALS_API_URL (one node), "
            "or ORACLE_API_URL (discover nodes from the Plumise Oracle)."
        )


def build_gateway(settings: Settings, http: httpx.AsyncClient, session: aiohttp.ClientSession) -> Gateway:
    counter = TokenCounter(settings.tiktoken_encoding)
    catalog = load_catalog(settings.models_file)
    pool = NodePool(settings, counter)
    pool.node_names = {spec.id: spec.node_model for spec in catalog if spec.node_model != spec.id}
    for url in settings.all_node_urls:
        pool.add(client_for_url(url, http, timeout=settings.node_connect_timeout, session=session))
    assert settings.jwt_secret is not None
    tokens = TokenService(
        settings.jwt_secret.get_secret_value(),
        lifetime=settings.jwt_lifetime_seconds,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    store = create_store(settings.redis_url, prefix=settings.redis_prefix)
    chain = build_chain(settings, http, store)  # None unless the chain is on (Settings.chain_on)
    tiers = TierResolver(settings.pro_addresses, lookup=None if chain is None else chain.tiers.lookup)
    limiter = RateLimiter(store, settings)
    if chain is not None:
        limiter.on_usage.append(chain.record_usage)
    auth = Authenticator(tokens, parse_service_keys(settings.api_keys), tiers, store)
    service = InferenceService(settings, catalog, pool, counter)
    return Gateway(
        settings=settings, catalog=catalog, counter=counter, http=http, pool=pool, service=service, auth=auth,
        store=store, limiter=limiter, signin=SignInService(store, tokens, tiers, settings), chain=chain,
    )


def node_http_client(settings: Settings) -> httpx.AsyncClient:
    # No read timeout here: the pool enforces first-token and idle deadlines around every node alike.
    timeout = httpx.Timeout(connect=settings.node_connect_timeout, read=None, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    check_settings(settings)
    sockets = InferenceSockets(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with node_http_client(settings) as http, node_session(settings.node_connect_timeout) as session:
            gw = build_gateway(settings, http, session)
            await gw.pool.check_health()
            tasks = [asyncio.create_task(gw.pool.run_health_checks(), name="health-checks")]
            if settings.oracle_api_url:  # first poll at once, in the background: a down Oracle never blocks startup
                discovery = OracleDiscovery(settings, http, gw.pool, gw.catalog.ids)
                tasks.append(asyncio.create_task(discovery.run(), name="oracle-discovery"))
            reporter = UsageReporter(settings, http) if UsageReporter.enabled(settings) else None
            if reporter is not None:
                gw.pool.served.append(reporter.served)
                tasks.append(asyncio.create_task(reporter.run(), name="usage-reports"))
            metrics.watch(gw.pool)
            if metrics.multiprocess:
                tasks.append(asyncio.create_task(metrics.run_node_sync(), name="node-metrics"))
            if gw.chain is not None:
                metrics.watch_chain(gw.chain.stats)  # every worker exports its counters from the start
                gw.chain.start()  # the credit sender; it never delays startup, reachable chain or not
            # Everything built so far (modules, schemas, encodings: about 100k objects) lives as long as the
            # app: out of the cyclic collector's sight, so its full collections (about 25 ms each) stop
            # walking it in the middle of requests. +15% req/s and a third off p99 in bench/ scenario (a).
            gc.freeze()
            # A request allocates a few thousand objects, nearly all freed by reference counting when it ends:
            # at the default threshold (700) the young generation was collected several times per request for
            # little. 10,000 (and older generations collected half as often) took ~6% off the CPU per request
            # in bench/ scenario (a), for a couple of MB of garbage that waits a little longer.
            thresholds = gc.get_threshold()
            gc.set_threshold(10_000, 20, 20)
            try:
                yield {"gateway": gw}
            finally:
                gc.set_threshold(*thresholds)
                gc.unfreeze()  # what the app held is ordinary garbage again once it stops
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if reporter is not None:
                    await reporter.flush()  # the counts since the last round, bounded by the report timeout
                metrics.close()
                if gw.chain is not None:
                    await gw.chain.close()
                await sockets.close()
                await gw.store.close()

    return Starlette(
        routes=[*health.routes, *openai.routes, *auth.routes, *payment_api.routes, *legacy.routes,
                *metrics.routes(), *docs.ApiDocs(docs.collect(API_MODULES)).routes(), *nodes_api.routes,
                *report_api.routes, *relay_api.routes],
        middleware=_middleware(settings, sockets, metrics),
        exception_handlers={GatewayError: render_error, HTTPException: render_http_error, Exception: render_crash},
        lifespan=lifespan,
    )


def _middleware(settings: Settings, sockets: InferenceSockets, metrics: Metrics) -> list[Middleware]:
    """Outermost first: /socket.io/ goes to Socket.IO, the rest gets a request id, an access line and CORS."""
    return [
        Middleware(sockets.wrap),
        Middleware(RequestContextMiddleware, metrics=metrics),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        ),
    ]


def error_response(exc: GatewayError) -> Response:
    return Response(
        exc.body_json(), status_code=exc.status_code, headers=exc.headers, media_type="application/json"
    )


async def render_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def render_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    route = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return error_response(NotFound(f"No route for {route}."))
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(f"Method not allowed: {route}.", headers=dict(exc.headers or {})))
    return error_response(InvalidRequest(str(exc.detail)))


async def render_crash(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(GatewayError("The gateway hit an internal error. Please retry; it has been logged."))
