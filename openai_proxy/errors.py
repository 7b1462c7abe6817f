"""One exception tree, rendered once as the OpenAI error envelope.

    GatewayError
    ├── ClientError                       the caller can fix it
    │   ├── InvalidRequest         400    invalid_request_error, names the `param`
    │   ├── AuthError              401    invalid_api_key / token_expired
    │   ├── Forbidden              403    e.g. a pro-only model for a free wallet
    │   ├── NotFound               404    unknown route or resource
    │   │   └── ModelNotFound      404    model_not_found
    │   ├── MethodNotAllowed       405
    │   ├── PayloadTooLarge        413
    │   ├── RateLimited            429    rate_limit_exceeded, with Retry-After
    │   └── ClientClosedRequest    499    the client hung up before its answer (nobody reads the body)
    └── ServerError                       ours or the nodes'; the request is refunded
        ├── ServiceUnavailable     503    with Retry-After
        │   └── NoHealthyNode      503    no node serves the model right now
        ├── BadUpstreamResponse    502    a node answered garbage or failed
        └── UpstreamTimeout        504    a node did not answer in time

Code raises these; `render_error` turns one into a JSON response (before the first byte of a response) and
`error_body` into the body of an in-band SSE error event (after it). Node tracebacks never reach clients.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar


class GatewayError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def body_json(self) -> str:
        return json.dumps(self.body())


class ClientError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    default_code = "invalid_request"


class AuthError(ClientError):
    status_code = 401
    default_code = "invalid_api_key"


class Forbidden(ClientError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFound(ClientError):
    status_code = 404
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist. GET /v1/models lists the models this gateway serves.",
            param="model",
        )


class MethodNotAllowed(ClientError):
    status_code = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status_code = 413
    default_code = "payload_too_large"


class RateLimited(ClientError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str] | None = None) -> None:
        merged = {"Retry-After": str(max(1, math.ceil(retry_after))), **(headers or {})}
        super().__init__(message, headers=merged)


class ClientClosedRequest(ClientError):
    """The client disconnected while its non-streaming answer was being generated. Nobody receives the
    response; the status (nginx's 499) is for the access log and metrics."""

    status_code = 499
    default_code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


class ServerError(GatewayError):
    pass


class ServiceUnavailable(ServerError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class NoHealthyNode(ServiceUnavailable):
    default_code = "no_healthy_node"


class BadUpstreamResponse(ServerError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_node_response"


class UpstreamTimeout(ServerError):
    status_code = 504
    error_type = "upstream_error"
    default_code = "node_timeout"

