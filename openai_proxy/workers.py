"""What several worker processes (`openai-proxy serve --workers N`) need beyond uvicorn's own supervisor.

* `Supervisor`: on SIGTERM or SIGINT the parent closes its copy of the shared listening socket at once.
  uvicorn's supervisor keeps it open until every worker has drained, so during the grace period new
  connections queue on a socket nobody accepts from any more (and are reset at exit) instead of being
  refused at once, which is what lets a load balancer or client retry elsewhere.
* `metrics_directory`: the PROMETHEUS_MULTIPROC_DIR the workers share (metrics.py): the operator's, emptied
  of an earlier run's files (their values would be added to this run's), or a temporary one. It is set in
  this process's environment, which the spawned workers inherit, before they start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uvicorn.supervisors import Multiprocess

from .metrics import MULTIPROC_ENV

# How long the supervisor waits for a worker's health answer before it kills and replaces the worker. uvicorn's
# 5 s is shorter than a worker's start (imports) on a busy two-core machine, which made it kill healthy workers.
HEALTHCHECK_SECONDS = 30


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, refusing new connections as soon as shutdown begins."""

    def handle_term(self) -> None:
        self._stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_listening()
        super().handle_int()

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()  # the workers close their own copies when they receive SIGTERM


@contextmanager
def metrics_directory() -> Iterator[Path]:
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="openai-proxy-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        try:
            yield Path(directory)
        finally:
            del os.environ[MULTIPROC_ENV]
