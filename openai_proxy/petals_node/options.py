"""Command-line options of `petals-node`, shared by `python -m openai_proxy.petals_node` and `openai-proxy`.

This module imports nothing heavy: the gateway's CLI imports it to register the subcommand.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PORT = 5000  # the port the public Petals front end (chat.petals.dev) listens on


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """What one petals-node serves and where it finds the swarm."""

    model: str  # a Hugging Face hub name or a local directory (weights are loaded only for the local layers)
    name: str  # the model name published by /health and accepted in requests
    initial_peers: tuple[str, ...]  # empty: Petals' public swarm
    dht_prefix: str | None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    torch_dtype: str = "float32"
    log_level: str = "info"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub name or local directory of the model")
    parser.add_argument(
        "--name",
        help="model name to publish in /health and accept in requests (default: --model); requests may also "
        "name the model by --model",
    )
    parser.add_argument(
        "--initial-peers",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer of the swarm, e.g. /ip4/10.0.0.2/tcp/31337/p2p/Qm... (repeatable; default: the public swarm)",
    )
    parser.add_argument(
        "--dht-prefix",
        help="the swarm's DHT prefix for this model (required for a local directory: Petals derives it only "
        "from hub names)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--torch-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "auto"],
        help="dtype of the client-side layers (embeddings, LM head); default float32 (CPU)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def options_from(args: argparse.Namespace) -> NodeOptions:
    return NodeOptions(
        model=args.model,
        name=args.name or args.model,
        initial_peers=tuple(args.initial_peers),
        dht_prefix=args.dht_prefix,
        host=args.host,
        port=args.port,
        torch_dtype=args.torch_dtype,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m openai_proxy.petals_node`: runs with only the Petals stack and the light web deps."""
    parser = argparse.ArgumentParser(prog="python -m openai_proxy.petals_node", description=__doc__)
    add_arguments(parser)
    options = options_from(parser.parse_args(argv))
    from .server import serve  # the web stack; torch and petals only once the model loads

    raise SystemExit(serve(options))
