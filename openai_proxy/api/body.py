"""Reading a JSON request body into a wire model, with the size limit and clear 400s."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .. import jsonsafe
from ..errors import InvalidRequest, PayloadTooLarge

ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json_body(request: Request, model: type[ModelT], max_bytes: int) -> ModelT:
    raw = await read_body(request, max_bytes)
    try:
        data = jsonsafe.loads(raw)
    except ValueError as exc:  # bad JSON, invalid UTF-8, or nesting too deep
        raise InvalidRequest(
            "The request body is not valid JSON. Send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        ) from exc
    return validate(model, data)


def validate(model: type[ModelT], data: object) -> ModelT:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc) from None


def invalid_from(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    param = location(error["loc"])
    message = error["msg"]
    return InvalidRequest(f"Invalid value for '{param}': {message}." if param else f"{message}.", param=param)


def location(loc: tuple[int | str, ...]) -> str | None:
    """pydantic's ('messages', 0, 'content', 'str') → 'messages[0].content'."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("str", "list[str]", "list[int]", "list[list[int]]", "list[dict[str,any]]") or "[" in item:
            break  # pydantic names the union member it tried; the client only needs the field
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or None


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds the limit of {max_bytes} bytes.")
