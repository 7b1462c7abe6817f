"""The node simulator ("devnode"): one process that speaks all four node protocols on one port.

* `GET /health` — `{"status": "ok"|"loading", "model"?, "address"}`
* `POST /api/v1/generate`, JSON body — the Plumise node API (upstream-protocols.md §5.1)
* `POST /api/v1/generate`, form or query — the public Petals HTTP API (§12.1)
* WebSocket `/api/v2/generate` — the Petals WebSocket API (§12.2)
* `POST /v1/completions`, `POST /v1/chat/completions` — an OpenAI-type node (§5.3), JSON or SSE
* `GET`/`POST /control` — read the config and counters / change the config (faults, delays, EOS) at run time

Answers come from a deterministic word generator (`generate_tokens`) that supports exact continuation,
so tests can check every relayed byte, including answers finished by a second node after a failover.
"""

from __future__ import annotations

from .app import create_devnode_app, serve_devnode
from .state import DevnodeConfig
from .text import VOCAB, generate_tokens

__all__ = ["VOCAB", "DevnodeConfig", "create_devnode_app", "generate_tokens", "serve_devnode"]
