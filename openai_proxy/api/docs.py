"""OpenAPI 3.1 at /openapi.json and Swagger UI at /api/docs, from the routes' own declarations.

Every API module lists its `operations` next to its `routes`: method, path, summary, the pydantic model that
validates the request (the very one the handler parses with), the response model, and the error statuses it
can answer with. `build_spec` turns that table into the document; component schemas come from pydantic, so
the spec cannot drift from what the handlers accept. tests/test_docs.py checks every route is declared.

Swagger UI's assets come from the swagger-ui-bundle-v2 package (Swagger UI 5, the first to render OpenAPI 3.1)
and are served from this process: the page works offline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..errors import NotFound
from ..protocol import ErrorResponse

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerAuth"
Schema = Mapping[str, Any]

ERROR_RESPONSES: dict[int, tuple[str, str]] = {  # status -> (component name, description)
    400: ("BadRequest", "Invalid request: the message names the offending `param`."),
    401: ("Unauthorized", "Missing, invalid, expired or revoked token."),
    403: ("Forbidden", "Not allowed for this account's tier."),
    404: ("NotFound", "No such route, model or resource."),
    413: ("PayloadTooLarge", "The request body exceeds MAX_BODY_BYTES."),
    431: ("HeadersTooLarge", "The request line and headers exceed MAX_HEADER_BYTES (any operation)."),
    429: ("RateLimited", "Rate limit reached; see `Retry-After` and the `x-ratelimit-*` headers."),
    500: ("ServerError", "The gateway hit an internal error."),
    502: ("BadGateway", "The nodes failed to produce an answer."),
    503: ("Unavailable", "No healthy node serves the model, or the state store is unreachable."),
    504: ("GatewayTimeout", "The nodes did not answer in time."),
}
TAGS = [
    {"name": "OpenAI", "description": "The OpenAI-compatible API: point any OpenAI client at `/v1`."},
    {"name": "Auth", "description": "Wallet sign-in: get a nonce, sign it, exchange the signature for a JWT."},
    {"name": "Inference", "description": "The original Plumise Inference API routes."},
    {"name": "Models", "description": "The original Plumise model catalogue routes."},
    {"name": "Nodes", "description": "The inference nodes behind the gateway."},
    {"name": "Reports", "description": "Node reports (internal; `x-api-key`)."},
    {"name": "Operations", "description": "Health, readiness, metrics and this documentation."},
]
DESCRIPTION = """\
The Plumise inference gateway: an OpenAI-compatible API over Petals nodes, with wallet sign-in.

**Authentication.** Protected routes take `Authorization: Bearer <JWT>`. Get a token by signing in with a
wallet (`POST /api/v1/auth/nonce`, sign the message, `POST /api/v1/auth/verify`) or, as an operator, with
`openai-proxy token --address 0x...`. Press **Authorize** and paste the token (without `Bearer `).

Streaming responses (`"stream": true`) are server-sent events: `data: {chunk}` lines ending with
`data: [DONE]`. The Socket.IO namespace `/ws/inference` is not described here (OpenAPI cannot express it).
"""


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented operation. `path` uses OpenAPI templates (`/v1/models/{model_id}`)."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    summary: str
    tag: str
    request: type[BaseModel] | None = None  # the JSON body model the handler validates with
    example: Mapping[str, Any] | None = None  # a request body that works as is (Swagger's "Try it out")
    query: type[BaseModel] | None = None  # fields become query parameters
    response: type[BaseModel] | Schema | None = None  # the 200 body
    media_type: str = "application/json"
    streams: bool = False  # 200 may instead be `text/event-stream` (with `"stream": true`)
    errors: tuple[int, ...] = ()  # statuses answered with the OpenAI error envelope
    same_body: tuple[int, ...] = ()  # other statuses whose body has the 200 schema (e.g. /ready's 503)
    auth: bool = True
    description: str | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)  # name -> description

    @property
    def operation_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.path).strip("_") or "root"
        return f"{self.method.lower()}_{slug}"


def collect(modules: Iterable[ModuleType]) -> list[Operation]:
    """The `operations` every API module declares next to its `routes`, plus this module's own."""
    found: list[Operation] = []
    for module in modules:
        found.extend(getattr(module, "operations", ()))
    return [*found, *operations]


def build_spec(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `operations`."""
    schemas = _Schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "openai-proxy", "version": __version__, "description": DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas.definitions,
            "responses": {name: _error_response(description, schemas) for name, description in
                          ERROR_RESPONSES.values()},
            "securitySchemes": {SECURITY_SCHEME: {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A JWT from wallet sign-in (`/api/v1/auth/verify`) or `openai-proxy token`.",
            }},
        },
    }


class _Schemas:
    """Component schemas for every model the operations name, generated by pydantic in one pass."""

    def __init__(self, operations: Sequence[Operation]) -> None:
        wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorResponse, "serialization"): None}
        for op in operations:
            for model in (op.request, op.query):
                if model is not None:
                    wanted[(model, "validation")] = None
            if isinstance(op.response, type):
                wanted[(op.response, "serialization")] = None
        refs, top = models_json_schema(list(wanted), ref_template=REF)
        self.refs = refs
        self.definitions: dict[str, Any] = top.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(self.refs[(model, mode)])

    def body(self, response: type[BaseModel] | Schema) -> dict[str, Any]:
        return self.ref(response, "serialization") if isinstance(response, type) else dict(response)

    def properties(self, model: type[BaseModel]) -> tuple[dict[str, Any], set[str]]:
        name = self.ref(model, "validation")["$ref"].rsplit("/", 1)[-1]
        schema = self.definitions[name]
        return schema.get("properties", {}), set(schema.get("required", []))


def _operation(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    spec: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                            "security": [{SECURITY_SCHEME: []}] if op.auth else []}
    if op.description:
        spec["description"] = op.description
    if parameters := _parameters(op, schemas):
        spec["parameters"] = parameters
    if op.request is not None:
        body: dict[str, Any] = {"schema": schemas.ref(op.request, "validation")}
        if op.example is not None:
            body["example"] = dict(op.example)
        spec["requestBody"] = {"required": True, "content": {"application/json": body}}
    spec["responses"] = _responses(op, schemas)
    return spec


def _parameters(op: Operation, schemas: _Schemas) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
               "description": op.path_params.get(name, "")}
              for name in re.findall(r"\{(\w+)\}", op.path)]
    if op.query is not None:
        properties, required = schemas.properties(op.query)
        params += [{"name": name, "in": "query", "required": name in required, "schema": schema}
                   for name, schema in properties.items()]
    return params


def _responses(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if op.response is not None:
        content[op.media_type] = {"schema": schemas.body(op.response)}
    if op.streams:
        content["text/event-stream"] = {"schema": {"type": "string", "description":
                                        "Server-sent events: `data: {chunk}` lines, then `data: [DONE]`."}}
    ok: dict[str, Any] = {"description": "Success."}
    if content:
        ok["content"] = content
    responses: dict[str, Any] = {"200": ok}
    for status in op.same_body:
        responses[str(status)] = {"description": f"HTTP {status}, with the same body.", "content": content}
    errors = {*op.errors, 431, 500, *((401,) if op.auth else ())}  # 431: openai_proxy/server.py, any route
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    return responses


def _error_response(description: str, schemas: _Schemas) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schemas.ref(ErrorResponse, "serialization")}}}


# --- serving ----------------------------------------------------------------------------------------------

ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>openai-proxy API</title>
  <link rel="stylesheet" href="{root}/api/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="{root}/api/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{root}/api/docs/assets/swagger-ui-bundle.js"></script>
  <script src="{root}/api/docs/init.js"></script>
</body>
</html>
"""
INIT = """window.ui = SwaggerUIBundle({{
  url: {spec_url},
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  tryItOutEnabled: false,
  displayRequestDuration: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
"""


class ApiDocs:
    """The spec (serialised once per mount prefix) and the Swagger UI page that loads it."""

    def __init__(self, operations: Sequence[Operation], assets: Path | None = None) -> None:
        self.spec = build_spec(operations)
        self.assets = Path(str(assets or swagger_ui_path))
        self._serialised: dict[str, bytes] = {}

    def spec_bytes(self, root_path: str) -> bytes:
        if root_path not in self._serialised:
            spec = dict(self.spec, servers=[{"url": root_path}]) if root_path else self.spec
            self._serialised[root_path] = json.dumps(spec).encode()
        return self._serialised[root_path]

    async def openapi(self, request: Request) -> Response:
        return Response(self.spec_bytes(request.scope.get("root_path", "")), media_type="application/json")

    async def page(self, request: Request) -> Response:
        return Response(PAGE.format(root=request.scope.get("root_path", "")), media_type="text/html")

    async def init(self, request: Request) -> Response:
        spec_url = json.dumps(request.scope.get("root_path", "") + "/openapi.json")
        return Response(INIT.format(spec_url=spec_url), media_type="text/javascript")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:  # an allow-list: the bundle's own index.html would load a remote spec
            raise NotFound(f"No documentation asset named '{name}'.")
        return FileResponse(self.assets / name, headers={"cache-control": "public, max-age=86400"})

    def routes(self) -> list[Route]:
        return [
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/docs", self.page, methods=["GET"]),
            Route("/api/docs/init.js", self.init, methods=["GET"], include_in_schema=False),
            Route("/api/docs/assets/{name}", self.asset, methods=["GET"], include_in_schema=False),
        ]


operations = [
    Operation("GET", "/openapi.json", "This OpenAPI 3.1 document", "Operations", auth=False,
              response={"type": "object", "description": "An OpenAPI 3.1 document."}),
    Operation("GET", "/api/docs", "Swagger UI for this API (works offline)", "Operations", auth=False,
              response={"type": "string"}, media_type="text/html"),
]
