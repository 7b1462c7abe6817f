"""A minimal HTTP/1.1 client over asyncio streams, for the Python load generator.

Why not httpx or aiohttp: the load generator shares two cores with the servers it measures, so it must cost
as little as possible per request. Requests are prebuilt bytes, responses are read with one `readuntil` for
the head and `readexactly` for the body (Content-Length or chunked). Keep-alive, one request at a time per
connection; nothing else of HTTP is needed to drive our own servers on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass


class ProtocolError(Exception):
    """The server answered something this client does not understand, or closed the connection."""


@dataclass(frozen=True, slots=True)
class Request:
    """A prebuilt POST: the exact bytes sent, reused for every request of a run."""

    raw: bytes

    @classmethod
    def post_json(cls, host: str, port: int, path: str, body: object, headers: Mapping[str, str]) -> Request:
        payload = json.dumps(body, separators=(",", ":")).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                 f"Content-Length: {len(payload)}", "Accept: */*"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return cls(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


@dataclass(slots=True)
class _Head:
    status: int
    length: int | None
    chunked: bool
    close: bool


def _parse_head(head: bytes) -> _Head:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    return _Head(int(parts[1]), length, chunked, close)


class Connection:
    """One keep-alive connection. `status` holds the last response's status code."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.status = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self._reader, self._writer

    async def fetch(self, request: Request) -> bytes:
        """Send `request` and return the whole response body."""
        return b"".join([piece async for piece in self.stream(request)])

    async def stream(self, request: Request) -> AsyncIterator[bytes]:
        """Send `request` and yield the response body as it arrives (one piece per HTTP chunk)."""
        try:
            reader, writer = await self._open()
            writer.write(request.raw)
            head = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            self.status = head.status
            if head.chunked:
                async for piece in _chunks(reader):
                    yield piece
            elif head.length is not None:
                yield await reader.readexactly(head.length)
            else:
                yield await reader.read()
                head.close = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError) as exc:
            self.close()
            raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()  # abandoned mid-response (cancelled, or the caller stopped reading): unusable
            raise
        if head.close:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from our servers: the empty line ends the body
            return
        piece = await reader.readexactly(size + 2)
        yield piece[:-2]
