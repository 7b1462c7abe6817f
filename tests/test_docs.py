"""/openapi.json and /api/docs: a valid OpenAPI 3.1 document built from the models that validate requests."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from openai_proxy import protocol
from openai_proxy.api.docs import REF, ApiDocs, collect
from openai_proxy.app import API_MODULES, create_app

from .conftest import make_settings

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def gateway(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([node.url])


@pytest.fixture
async def spec(gateway, http) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = await http.get(f"{gateway.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_the_document_validates_as_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(spec).iter_errors()]
    assert errors == []


def test_every_route_of_the_app_is_documented(spec: dict[str, Any]) -> None:
    app = create_app(make_settings(node_urls=["http://127.0.0.1:9"]))
    documented = {(method, path) for method, path, _ in operations(spec)}
    routes = set()
    for route in app.routes:
        if isinstance(route, Route) and route.include_in_schema:
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {model_id:path} -> {model_id}
            routes |= {(method, path) for method in route.methods or () if method != "HEAD"}
    assert routes - documented == set(), "routes missing from the operations lists"
    assert documented - routes == set(), "documented operations with no route"
    for path in ("/v1/chat/completions", "/v1/models", "/api/v1/auth/verify", "/health", "/ready", "/metrics"):
        assert path in spec["paths"]


def test_every_operation_has_responses_errors_and_a_security_decision(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(spec):
        assert op["summary"] and op["tags"], (method, path)
        assert "200" in op["responses"] and "500" in op["responses"], (method, path)
        assert op["security"] in ([], [{"bearerAuth": []}]), (method, path)
        if op["security"]:
            assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and "$ref" in response:
                name = response["$ref"].rsplit("/", 1)[-1]
                schema = spec["components"]["responses"][name]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    protected = {path for method, path, op in operations(spec) if op["security"]}
    assert {"/v1/chat/completions", "/v1/models", "/api/v1/auth/me"} <= protected
    public = {path for method, path, op in operations(spec) if not op["security"]}
    assert {"/api/v1/auth/nonce", "/api/v1/auth/verify", "/health", "/openapi.json"} <= public


def test_request_bodies_are_the_protocol_models(spec: dict[str, Any]) -> None:
    bodies = {(method, path): op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
              for method, path, op in operations(spec) if "requestBody" in op}
    assert bodies[("POST", "/v1/chat/completions")] == "#/components/schemas/ChatCompletionRequest"
    assert bodies[("POST", "/v1/completions")] == "#/components/schemas/CompletionRequest"
    assert bodies[("POST", "/api/v1/auth/nonce")] == "#/components/schemas/NonceRequest"
    schemas = spec["components"]["schemas"]
    for ref in bodies.values():
        name = ref.rsplit("/", 1)[-1]
        model = getattr(protocol, name)  # every request body is a model of protocol.py ...
        generated = model.model_json_schema(ref_template=REF)
        generated.pop("$defs", None)
        assert schemas[name] == generated  # ... and its schema is exactly what pydantic says it validates


async def test_the_documented_limits_are_the_enforced_ones(spec: dict[str, Any], gateway, http) -> None:  # type: ignore[no-untyped-def]
    temperature = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["temperature"]
    maximum = next(option["maximum"] for option in temperature["anyOf"] if "maximum" in option)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    accepted = await http.post(f"{gateway.v1}/chat/completions", json={**body, "temperature": maximum},
                               headers=gateway.headers())
    refused = await http.post(f"{gateway.v1}/chat/completions", json={**body, "temperature": maximum + 0.5},
                              headers=gateway.headers())
    assert accepted.status_code == 200
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "temperature"


def test_streaming_operations_document_server_sent_events(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "text/event-stream" in content
    retrieve = spec["paths"]["/v1/models/{model_id}"]["get"]
    assert [p["name"] for p in retrieve["parameters"] if p["in"] == "path"] == ["model_id"]


async def test_swagger_ui_is_served_from_local_assets(gateway, http) -> None:  # type: ignore[no-untyped-def]
    page = await http.get(f"{gateway.url}/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/api/docs/") for source in sources)  # nothing from a CDN
    for source in sources:
        asset = await http.get(f"{gateway.url}{source}")
        assert asset.status_code == 200, source
    bundle = await http.get(f"{gateway.url}/api/docs/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text and "cache-control" in bundle.headers
    init = (await http.get(f"{gateway.url}/api/docs/init.js")).text
    assert 'url: "/openapi.json"' in init and "persistAuthorization: true" in init
    missing = await http.get(f"{gateway.url}/api/docs/assets/index.html")  # only the allow-listed files
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_behind_a_path_prefix_the_spec_names_its_server() -> None:
    docs = ApiDocs(collect(API_MODULES))
    assert json.loads(docs.spec_bytes("/gateway"))["servers"] == [{"url": "/gateway"}]
    assert "servers" not in json.loads(docs.spec_bytes(""))


async def test_request_examples_are_valid_requests(spec: dict[str, Any], gateway, http) -> None:  # type: ignore[no-untyped-def]
    examples = {path: op["requestBody"]["content"]["application/json"]["example"]
                for method, path, op in operations(spec)
                if "example" in op.get("requestBody", {}).get("content", {}).get("application/json", {})}
    assert {"/v1/chat/completions", "/v1/completions"} <= examples.keys()
    for path in ("/v1/chat/completions", "/v1/completions"):  # what "Try it out" sends, unchanged
        response = await http.post(f"{gateway.url}{path}", json=examples[path], headers=gateway.headers())
        assert response.status_code == 200, response.text
