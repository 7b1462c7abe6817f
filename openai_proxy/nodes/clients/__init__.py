"""One client per node protocol, chosen by the URL's scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import httpx

from ..base import NodeClient
from .openai import OpenAIClient
from .petals_http import PetalsHttpClient
from .petals_ws import PetalsWsClient
from .plumise import PlumiseClient

SCHEMES = ("http", "https", "petals+http", "petals+https", "petals+ws", "petals+wss", "openai+http", "openai+https")


def client_for_url(
    url: str, http: httpx.AsyncClient, *, timeout: float, session: aiohttp.ClientSession | None = None
) -> NodeClient:
    """`http://` is a Plumise node; `petals+http://`, `petals+ws://` and `openai+http://` say their protocol.

    `session` is the streaming data plane (clients/http.py), needed by `openai+` nodes only."""
    scheme, _, rest = url.strip().rstrip("/").partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES or not urlsplit(f"http://{rest}").hostname:
        raise ValueError(f"unsupported node URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}")
    protocol, _, transport = scheme.rpartition("+")
    if protocol == "petals" and transport in ("ws", "wss"):
        return PetalsWsClient(f"{transport}://{rest}", http, timeout, timeout)
    if protocol == "petals":
        return PetalsHttpClient(f"{transport}://{rest}", http, timeout)
    if protocol == "openai":
        if session is None:
            raise ValueError(f"node URL {url!r}: openai+ nodes need the streaming session")
        return OpenAIClient(f"{transport}://{rest}", http, session, timeout)
    return PlumiseClient(f"{transport}://{rest}", http, timeout)
