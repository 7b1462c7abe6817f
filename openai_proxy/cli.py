"""The `openai-proxy` console script: serve, demo, devnode, token, login, petals-node."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import SecretStr, ValidationError

from .app import ConfigurationError, check_settings, create_app
from .auth.jwt import TokenService
from .catalog import load_catalog
from .devnode import DevnodeConfig, serve_devnode
from .login import DEFAULT_KEY_ENV, DEFAULT_URL, FORMS, run_login
from .logs import configure_logging
from .petals_node.options import add_arguments as add_petals_node_arguments
from .server import serve, uvicorn_config
from .settings import Settings
from .tokens import TokenCounter, TokenizerUnavailable, model_counters

DEMO_ADDRESS = "0x00000000000000000000000000000000000De300"


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ConfigurationError, TokenizerUnavailable, ValidationError, ValueError) as exc:
        print(f"openai-proxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openai-proxy", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the gateway (configured from the environment and .env)")
    serve.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 3200)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (more than 1 needs REDIS_URL)")
    serve.set_defaults(run=run_serve)

    demo = commands.add_parser("demo", help="gateway + three simulated nodes, ready to try")
    demo.add_argument("--port", type=int, default=3200)
    demo.set_defaults(run=run_demo)

    devnode = commands.add_parser("devnode", help="a simulated node speaking all four node protocols")
    devnode.add_argument("--host", default="127.0.0.1")
    devnode.add_argument("--port", type=int, default=8090)
    devnode.add_argument("--model", help="serve only this model (reported by /health)")
    devnode.add_argument("--address", help="node wallet address reported by /health")
    devnode.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    devnode.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first token")
    devnode.add_argument("--eos-after", type=int, help="end every answer after this many tokens")
    devnode.add_argument("--fault", choices=["none", "fail", "hang", "die"], default="none")
    devnode.add_argument("--die-after", type=int, default=0, help="with --fault die: tokens before dying")
    devnode.set_defaults(run=run_devnode)

    token = commands.add_parser("token", help="mint an API token (JWT) from JWT_SECRET")
    token.add_argument("--address", required=True, help="wallet address the token is for (0x...)")
    token.set_defaults(run=run_token)

    login = commands.add_parser("login", help="sign in with a wallet key and print the API token (JWT)")
    login.add_argument("--url", default=DEFAULT_URL, help=f"gateway URL, with or without /v1 (default {DEFAULT_URL})")
    key = login.add_mutually_exclusive_group()  # never the key itself: argv is visible to every user
    key.add_argument("--key-env", default=DEFAULT_KEY_ENV, metavar="VAR",
                     help=f"environment variable holding the hex private key (default {DEFAULT_KEY_ENV})")
    key.add_argument("--key-file", metavar="PATH", help="file holding the hex private key")
    login.add_argument("--form", choices=FORMS, default="siwe", help="what the wallet signs (default siwe)")
    login.set_defaults(run=run_login)

    petals_node = commands.add_parser(
        "petals-node", help="the public Petals API over a real Petals client (its environment: "
        "scripts/install-petals-env.sh; also runs as `python -m openai_proxy.petals_node`)")
    add_petals_node_arguments(petals_node)
    petals_node.set_defaults(run=run_petals_node)
    return parser


def run_serve(args: argparse.Namespace) -> None:
    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key)) is not None}
    settings = Settings(**overrides)
    check_settings(settings)
    TokenCounter(settings.tiktoken_encoding)  # fail here, with the fix in the message, not in a worker
    model_counters((spec.id, spec.tokenizer) for spec in load_catalog(settings.models_file))  # the same
    serve(settings, workers=args.workers)


def run_petals_node(args: argparse.Namespace) -> None:
    # Imported here: the gateway itself never needs the Petals stack (torch loads with the model).
    from .petals_node.options import options_from
    from .petals_node.server import serve as serve_petals_node

    raise SystemExit(serve_petals_node(options_from(args)))


def run_devnode(args: argparse.Namespace) -> None:
    config = DevnodeConfig(
        host=args.host,
        port=args.port,
        model=args.model,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
        eos_after=args.eos_after,
        fault=args.fault,
        die_after=args.die_after,
    )
    if args.address:
        config.address = args.address
    asyncio.run(serve_devnode(config))


def run_token(args: argparse.Namespace) -> None:
    settings = Settings()
    if settings.jwt_secret is None:
        raise ConfigurationError("JWT_SECRET is not set: the token must be signed with the gateway's secret.")
    print(_token_service(settings).mint(args.address).token)


def _token_service(settings: Settings) -> TokenService:
    assert settings.jwt_secret is not None
    return TokenService(
        settings.jwt_secret.get_secret_value(),
        lifetime=settings.jwt_lifetime_seconds,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


def run_demo(args: argparse.Namespace) -> None:
    asyncio.run(_demo(args.port))


async def _demo(port: int) -> None:
    """Three simulated nodes (Plumise HTTP, Petals WebSocket, OpenAI-compatible) behind one gateway."""
    ready: asyncio.Queue[int] = asyncio.Queue()
    nodes = [
        asyncio.create_task(serve_devnode(DevnodeConfig(token_delay=0.02), on_ready=ready.put_nowait))
        for _ in range(3)
    ]
    ports = [await ready.get() for _ in nodes]
    urls = [f"http://127.0.0.1:{ports[0]}", f"petals+ws://127.0.0.1:{ports[1]}", f"openai+http://127.0.0.1:{ports[2]}"]
    settings = Settings(
        _env_file=None,
        host="127.0.0.1",
        port=port,
        jwt_secret=SecretStr(secrets.token_hex(32)),
        node_urls=urls,
        pro_addresses=[DEMO_ADDRESS],
        redis_url=None,
    )
    configure_logging(settings)
    token = _token_service(settings).mint(DEMO_ADDRESS).token
    _print_demo_banner(port, token)
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    try:
        await server.serve()
    finally:
        for task in nodes:
            task.cancel()
        await asyncio.gather(*nodes, return_exceptions=True)


def _print_demo_banner(port: int, token: str) -> None:
    base = f"http://127.0.0.1:{port}/v1"
    print(f"""
openai-proxy demo: gateway on {base} over three SIMULATED nodes (devnodes: deterministic lorem-ipsum text,
not a real model). A pro-tier API token for a demo wallet:

  export OPENAI_API_KEY={token}

Try it with curl (streaming):

  curl -N {base}/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "meta-llama/Llama-3.1-8B-Instruct", "stream": true, "max_tokens": 20,
         "messages": [{{"role": "user", "content": "Hello!"}}]}}'

or from Python (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="{token}")
  reply = client.chat.completions.create(model="meta-llama/Llama-3.1-8B-Instruct",
                                         messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=20)
  print(reply.choices[0].message.content)

Press Ctrl+C to stop.
""", flush=True)
