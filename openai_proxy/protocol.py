"""The OpenAI wire schema: every request and response body of /v1, in one place.

Requests are permissive where real clients need it (JSON null for any optional field, `content` as a string
or a list of parts, both `max_tokens` and `max_completion_tokens`, unknown extra keys ignored) and strict on
ranges. Parameters whose meaning the gateway cannot honour are rejected by `unsupported_parameter` with the
offending `param` named, never dropped silently (../shared/docs/openai-compat.md §0, §6).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CHOICES = 8
MAX_PROMPTS = 128  # len(prompts) * n for one /v1/completions call
MAX_STOPS = 4

FinishReason = Literal["stop", "length"]


class WireModel(BaseModel):
    # Unknown OpenAI fields (metadata, store, service_tier, ...) are accepted and ignored; NaN and infinity
    # are never valid numbers on this API.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(WireModel):
    include_usage: bool | None = None


class ChatMessageIn(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class SamplingFields(WireModel):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def output_limit(self) -> int | None:
        # langchain-openai sends only max_completion_tokens; when both are present it is the newer name.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    logprobs: int | None = Field(None, ge=0, le=5)

    def output_limit(self) -> int | None:
        return self.max_tokens


# --- responses --------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class ChunkChoice(BaseModel):
    index: int
    delta: dict[str, str] = Field(description="`role` on the first chunk, `content` after; `{}` at the end.")
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions the SDK tolerates: what a client needs to size its requests.
    context_length: int
    max_output_tokens: int
    tier: Literal["free", "pro"]
    available: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def unsupported_parameter(request: ChatCompletionRequest | CompletionRequest) -> tuple[str, str] | None:
    """The first parameter whose meaning cannot be honoured, as (param, message), or None."""
    if request.logit_bias:
        return "logit_bias", "logit_bias is not supported: Petals nodes do not expose token logits."
    if isinstance(request, ChatCompletionRequest):
        return _unsupported_chat_parameter(request)
    return _unsupported_completion_parameter(request)


def _unsupported_chat_parameter(request: ChatCompletionRequest) -> tuple[str, str] | None:
    if request.logprobs or request.top_logprobs:
        return "logprobs", "logprobs are not supported: Petals nodes do not return token log-probabilities."
    if request.tools or request.functions:
        param = "tools" if request.tools else "functions"
        return param, f"{param} (function calling) is not supported by this gateway."
    if isinstance(request.tool_choice, dict) or request.tool_choice == "required":
        return "tool_choice", "tool_choice requires tools, which this gateway does not support."
    kind = (request.response_format or {}).get("type", "text")
    if kind != "text":
        return "response_format", f"'response_format' of type '{kind}' is not supported with this model."
    return None


def _unsupported_completion_parameter(request: CompletionRequest) -> tuple[str, str] | None:
    if request.logprobs:
        return "logprobs", "logprobs are not supported: Petals nodes do not return token log-probabilities."
    if request.suffix:
        return "suffix", "suffix (insertion) is not supported by this gateway."
    if request.best_of is not None and request.best_of > (request.n or 1):
        return "best_of", "best_of greater than n is not supported: every generated choice is returned."
    return None


# --- wallet sign-in (/api/v1/auth) ---------------------------------------------------------------------------


class NonceRequest(WireModel):
    address: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="The wallet address signing in.")


class NonceResponse(BaseModel):
    nonce: str
    message: str = Field(description="The original plain message, for EIP-191 personal_sign.")
    siwe_message: str = Field(description="The same nonce as an EIP-4361 Sign-In with Ethereum message.")
    typed_data: dict[str, Any] = Field(description="The same nonce as EIP-712 typed data (eth_signTypedData_v4).")
    expires_at: str


class VerifyRequest(WireModel):
    """Either `address` (for a form issued by /nonce) or `message` (a SIWE message), plus the signature."""

    address: str | None = Field(None, pattern=r"^0x[0-9a-fA-F]{40}$")
    message: str | None = Field(None, max_length=4096)
    signature: str = Field(min_length=1, max_length=200)
    nonce: str | None = Field(
        None, max_length=128,
        description="With `address`: which issued nonce was signed. Optional (the latest one is assumed), but "
        "naming it keeps a pending sign-in valid when someone else requests newer nonces for the address.",
    )


class TokenResponse(BaseModel):
    token: str
    expires_at: str
    address: str
    tier: Literal["free", "pro"]


# --- the original Plumise API: /api/v1/inference*, /api/v1/models, Socket.IO /ws/inference ---------------------

LEGACY_DEFAULT_TEMPERATURE = 0.7  # the original's defaults (`?? 0.7`, `?? 0.9`), not OpenAI's
LEGACY_DEFAULT_TOP_P = 0.9
LEGACY_MAX_TEXT = 32000  # the original's length limit on `prompt` and on each message's `content`


class LegacyMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=LEGACY_MAX_TEXT)


class LegacyInferenceRequest(BaseModel):
    """The original `InferenceRequestDto`. Unknown fields are rejected, as the original's ValidationPipe did;
    `max_tokens` may be omitted (the tier's cap then applies), and explicit zeros are honoured."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    prompt: str | None = Field(None, max_length=LEGACY_MAX_TEXT)
    messages: list[LegacyMessage] | None = Field(None, min_length=1, description="Wins over `prompt` if both.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool | None = Field(None, description="Accepted and ignored: /api/v1/inference/stream streams.")

    def to_openai(self) -> ChatCompletionRequest | CompletionRequest:
        """The same request on the /v1 wire (chat when `messages` is given); needs `prompt` or `messages`."""
        common = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": LEGACY_DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            "top_p": LEGACY_DEFAULT_TOP_P if self.top_p is None else self.top_p,
        }
        if self.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in self.messages]
            return ChatCompletionRequest.model_validate({**common, "messages": messages})
        assert self.prompt is not None, "checked by the caller"
        return CompletionRequest.model_validate({**common, "prompt": self.prompt})


class LegacyAnswer(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class LegacyChoice(BaseModel):
    """`text` when the request had `prompt`, `message` when it had `messages` (both if it had both)."""

    text: str | None = None
    message: LegacyAnswer | None = None
    finish_reason: FinishReason


class LegacyInferenceResponse(BaseModel):
    id: str = Field(description="`req_<unix ms>_<16 hex>`, as the original.")
    model: str
    choices: list[LegacyChoice]
    usage: Usage


class LegacyModelInfo(BaseModel):
    id: str
    name: str
    description: str
    max_tokens: int = Field(description="The largest answer the model gives (per-request output cap).")
    context_length: int
    tier: Literal["free", "pro"]
    nodes: int = Field(description="Healthy nodes serving it now, plus agents whose live report lists it.")
    status: Literal["available", "degraded", "offline"] = Field(
        description="offline: no node; degraded: some of its nodes are down; available: otherwise."
    )


class LegacyModelList(BaseModel):
    models: list[LegacyModelInfo]


# --- agent reports (/api/v1/report) ----------------------------------------------------------------------


class AgentPerformance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: float = Field(ge=0)
    avgLatency: float = Field(ge=0)
    errors: float = Field(ge=0)


class AgentReport(BaseModel):
    """The body of `POST /api/v1/report` (the original's AgentReportDto: unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    agentId: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(max_length=100)
    performance: AgentPerformance
    timestamp: float = Field(description="Epoch milliseconds.")
