"""The devnode's run-time state: its configuration (changeable through `/control`) and its counters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FAULTS = ("none", "fail", "hang", "die")

Outcome = Literal["completed", "cancelled", "failed"]


@dataclass
class DevnodeConfig:
    """How the simulated node behaves. Everything but host/port can be changed at run time via `/control`.

    `fault` is one of "none", "fail" (answer with the protocol's error), "hang" (accept and never answer)
    and "die" (send `die_after` tokens, then drop the connection without a proper end).
    """

    host: str = "127.0.0.1"
    port: int = 0
    model: str | None = None
    address: str = "0x000000000000000000000000000000000000dEaD"
    token_delay: float = 0.0
    first_token_delay: float = 0.0
    eos_after: int | None = None
    fault: str = "none"
    die_after: int = 0
    loading: bool = False

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}, not {self.fault!r}")
        if min(self.token_delay, self.first_token_delay, self.die_after) < 0:
            raise ValueError("delays and die_after must not be negative")
        if self.eos_after is not None and self.eos_after < 0:
            raise ValueError("eos_after must not be negative")

    def answer_length(self, requested: int) -> int:
        """How many tokens an answer of at most `requested` tokens really has (shorter if EOS comes first)."""
        requested = max(requested, 0)
        return requested if self.eos_after is None else min(requested, self.eos_after)

    def model_error(self, requested: str | None) -> str | None:
        """Why this node cannot serve `requested`, or None (no model configured or named means any)."""
        if self.model is None or requested is None or requested == self.model:
            return None
        return f"The model `{requested}` does not exist on this node (it serves `{self.model}`)"


class ControlUpdate(BaseModel):
    """Body of `POST /control`: any subset of the run-time settings (host and port are fixed)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    address: str = ""
    token_delay: float = Field(default=0.0, ge=0)
    first_token_delay: float = Field(default=0.0, ge=0)
    eos_after: int | None = Field(default=None, ge=0)
    fault: Literal["none", "fail", "hang", "die"] = "none"
    die_after: int = Field(default=0, ge=0)
    loading: bool = False


@dataclass
class Counters:
    """Generations seen by this node. `requests` counts every generation started (a WebSocket session
    counts once per `generate` message); each one ends as exactly one of completed, cancelled (the client
    went away first) or failed (a simulated fault, or a session error)."""

    requests: int = 0
    in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0


class Tally:
    """One generation's entry in the counters: opened on creation, closed exactly once.

    Used as a context manager, leaving the block without `close()` counts as cancelled: every way out
    that is not an explicit success or fault is the client going away (disconnect, cancellation)."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._open = True
        counters.requests += 1
        counters.in_flight += 1

    def close(self, outcome: Outcome) -> None:
        if not self._open:
            return
        self._open = False
        self._counters.in_flight -= 1
        setattr(self._counters, outcome, getattr(self._counters, outcome) + 1)

    def __enter__(self) -> Tally:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close("cancelled")


class NodeState:
    """The mutable heart of one devnode app, kept in `app.state.node` (one object, never reassigned)."""

    def __init__(self, config: DevnodeConfig) -> None:
        # Shared, not copied: whoever built the app may keep the object and read or change it directly.
        self.config = config
        self.counters = Counters()

    def snapshot(self) -> DevnodeConfig:
        """A private copy for one request, so a `/control` change mid-request cannot split its behaviour."""
        return dataclasses.replace(self.config)

    def tally(self) -> Tally:
        return Tally(self.counters)

    def apply(self, update: ControlUpdate) -> None:
        """Change the config in place (so holders of the object see it), after validating the result."""
        changes = update.model_dump(exclude_unset=True)
        dataclasses.replace(self.config, **changes)  # runs __post_init__: raises before anything changes
        for name, value in changes.items():
            setattr(self.config, name, value)

    def describe(self, *, with_counters: bool) -> dict[str, Any]:
        view = dataclasses.asdict(self.config)
        if with_counters:
            view.update(dataclasses.asdict(self.counters))
        return view
