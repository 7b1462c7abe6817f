"""The ASGI entry point for process managers and `--reload`: `uvicorn openai_proxy.asgi:create_app --factory`.

Each worker process calls the factory, which reads Settings from the environment (and `.env`) and sets up
JSON logging, exactly as `openai-proxy serve` does in its single process. Nothing happens on import.
"""

from __future__ import annotations

from starlette.applications import Starlette

from . import app
from .logs import configure_logging
from .settings import Settings


def create_app() -> Starlette:
    settings = Settings()
    configure_logging(settings)
    return app.create_app(settings)
