"""The floor a Python proxy can reach: a bare Starlette passthrough to one OpenAI-compatible node.

No auth, no limits, no parsing: the body goes up as it came, the answer (JSON or SSE) comes back as it came.
`--client` picks the upstream HTTP client, the one choice the issue found moves throughput 7x.

    python -m bench.passthrough --port 8001 --upstream http://127.0.0.1:8000 --client httpx
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

JSON = {"content-type": "application/json"}


def httpx_app(upstream: str) -> Starlette:
    client = httpx.AsyncClient(base_url=upstream, timeout=None, limits=httpx.Limits(max_connections=None))

    async def relay(request: Request) -> Response:
        sent = client.build_request("POST", request.url.path, content=await request.body(), headers=JSON)
        reply = await client.send(sent, stream=True)
        kind = reply.headers.get("content-type", "application/json")
        if kind.startswith("text/event-stream"):
            return StreamingResponse(reply.aiter_raw(), media_type=kind, background=BackgroundTask(reply.aclose))
        return Response(await reply.aread(), status_code=reply.status_code, media_type=kind)

    return Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"])])


def aiohttp_app(upstream: str) -> Starlette:
    import aiohttp  # only this variant needs it

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(upstream, connector=connector, timeout=aiohttp.ClientTimeout()) as session:
            app.state.session = session
            yield

    async def relay(request: Request) -> Response:
        reply = await request.app.state.session.post(request.url.path, data=await request.body(), headers=JSON)
        kind = reply.headers.get("content-type", "application/json")
        if kind.startswith("text/event-stream"):

            async def release() -> None:  # async: Starlette would run a plain function in a worker thread
                reply.release()

            return StreamingResponse(reply.content.iter_any(), media_type=kind, background=BackgroundTask(release))
        body = await reply.read()
        reply.release()
        return Response(body, status_code=reply.status, media_type=kind)

    return Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the node's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    app = httpx_app(args.upstream) if args.client == "httpx" else aiohttp_app(args.upstream)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
