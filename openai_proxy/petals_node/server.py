"""Run petals-node under uvicorn until it is stopped, or until the model fails to load (exit status 1)."""

from __future__ import annotations

import logging
import os

import uvicorn

from .app import create_app
from .options import NodeOptions
from .runtime import NodeRuntime


def serve(options: NodeOptions) -> int:
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Fork-safety noise from tokenizers when uvicorn or Petals start subprocesses; we never fork mid-encode.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runtime = NodeRuntime(options)
    config = uvicorn.Config(create_app(runtime), host=options.host, port=options.port, log_config=None,
                            log_level=options.log_level, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    runtime.on_failure = stop
    server.run()
    return 1 if runtime.status == "failed" else 0
