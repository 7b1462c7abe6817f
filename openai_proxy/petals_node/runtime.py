"""The node's long-lived state: its options, the engine once loaded, and the counters /health reports.

`sessions` counts inference sessions open now (one per WebSocket, closed with it), `sessions_total` every
session ever opened, and `generating` the model calls running right now. Model calls run on worker threads,
off the event loop, so /health can answer while one runs and report it: a node that ran them on the loop
could never answer with `generating` above 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from .engine import PetalsEngine, RequestError
from .options import NodeOptions

log = logging.getLogger("openai_proxy.petals_node")

Status = Literal["loading", "ok", "failed"]


class NodeRuntime:
    """Loads the model in the background, so /health can answer "loading" while it does."""

    def __init__(self, options: NodeOptions, on_failure: Callable[[], None] = lambda: None) -> None:
        self.options = options
        self.on_failure = on_failure  # the server wires this to its own shutdown
        self.engine: PetalsEngine | None = None
        self.status: Status = "loading"
        self.sessions_open = 0
        self.sessions_total = 0
        self.generating = 0
        self._counter_lock = threading.Lock()  # sessions close on worker threads

    async def load(self) -> None:
        try:
            # Minutes for a big model: in a thread, so /health answers meanwhile.
            self.engine = await asyncio.to_thread(PetalsEngine.load, self.options)
        except ImportError as exc:
            log.error("cannot load %s: %s. petals-node runs in the Petals environment that "
                      "scripts/install-petals-env.sh builds (pip install openai-proxy[petals] alone does not work)",
                      self.options.model, exc)
            self._failed()
        # Boundary: any other failure to load (bad path, no swarm) ends the node, with the traceback logged.
        except Exception:
            log.exception("cannot load %s", self.options.model)
            self._failed()
        else:
            self.status = "ok"
            log.info("serving %s as %r", self.options.model, self.options.name)

    def _failed(self) -> None:
        self.status = "failed"
        self.on_failure()

    def accepts(self, model: str) -> bool:
        return model in (self.options.name, self.options.model)

    def engine_for(self, model: str) -> PetalsEngine:
        """The engine for a request naming `model`; RequestError when it is not this node's or not loaded."""
        if not self.accepts(model):
            raise RequestError(f"this node serves {self.options.name!r}, not {model!r}")
        if self.engine is None:
            raise RequestError(f"the model is not ready (status: {self.status})")
        return self.engine

    def session_opened(self) -> None:
        with self._counter_lock:
            self.sessions_open += 1
            self.sessions_total += 1

    def session_closed(self) -> None:
        with self._counter_lock:
            self.sessions_open -= 1

    @contextmanager
    def model_call(self) -> Iterator[None]:
        """Count a model call (a generation step, an HTTP generation) for as long as it runs."""
        with self._counter_lock:
            self.generating += 1
        try:
            yield
        finally:
            with self._counter_lock:
                self.generating -= 1

    def health(self) -> dict[str, object]:
        return {
            "status": self.status,
            "ready": self.status == "ok",
            "model": self.options.name,
            "model_path": self.options.model,
            "dht_prefix": self.options.dht_prefix,
            "sessions": self.sessions_open,
            "sessions_total": self.sessions_total,
            "generating": self.generating,
        }
