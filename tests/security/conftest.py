"""Fixtures of the security suite: a set of real child processes, stopped (by pid) after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..reliability.processes import ProcessSet


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessSet]:
    processes = ProcessSet(tmp_path)
    try:
        yield processes
    finally:
        processes.close()
