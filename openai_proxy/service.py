"""The request path every surface shares: plan (model, tier, prompt, limits) → run on the pool → results.

/v1, /api/v1 and Socket.IO differ only in how they parse requests and render answers; each one builds a
`Plan` with `plan_chat` / `plan_completion` and then calls `complete` (whole answers) or `stream` (events).
Stop strings, `max_tokens` and token counts are enforced here, on the text nodes produce.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from . import telemetry
from .auth.principal import Principal
from .catalog import Catalog, ModelSpec
from .errors import Forbidden, InvalidRequest, ModelNotFound
from .nodes.base import FinishReason, GenerationParams, NodeRequest
from .nodes.pool import GenerationStats, NodePool
from .protocol import MAX_PROMPTS, ChatCompletionRequest, ChatMessageIn, CompletionRequest, unsupported_parameter
from .settings import Settings
from .stops import StopScanner
from .surrogates import SurrogateJoiner
from .templates import ChatMessage, get_template
from .tokens import TokenCounter, model_counters

DEFAULT_TEMPERATURE = 1.0  # OpenAI's defaults, so a client that sends nothing gets what it would get there
DEFAULT_TOP_P = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    model: ModelSpec
    prompts: tuple[str, ...]
    prompt_tokens: tuple[int, ...]
    messages: tuple[ChatMessage, ...] | None
    n: int
    params: GenerationParams
    stops: tuple[str, ...]
    echo: bool = False
    include_usage: bool = False

    @property
    def choice_count(self) -> int:
        return len(self.prompts) * self.n


@dataclass(slots=True)
class ChoiceResult:
    index: int
    text: str = ""
    finish_reason: FinishReason = "stop"
    completion_tokens: int = 0
    nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    index: int
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


StreamEvent = Delta | Finished | Usage


class InferenceService:
    def __init__(self, settings: Settings, catalog: Catalog, pool: NodePool, counter: TokenCounter) -> None:
        self.settings = settings
        self.catalog = catalog
        self.pool = pool
        self.counter = counter
        # Exact prompt counts for models whose catalogue entry names a tokenizer; loaded (or failing) at start.
        self.model_counters = model_counters((spec.id, spec.tokenizer) for spec in catalog)

    # --- planning -------------------------------------------------------------------------------------------

    def resolve_model(self, model_id: str, principal: Principal) -> ModelSpec:
        spec = self.catalog.get(model_id)
        if spec is None:
            raise ModelNotFound(model_id)
        if spec.tier == "pro" and principal.tier != "pro":
            raise Forbidden(
                f"The model '{model_id}' requires the pro tier; this account is on the {principal.tier} tier.",
                param="model",
                code="tier_required",
            )
        return spec

    async def plan_chat(self, request: ChatCompletionRequest, principal: Principal) -> Plan:
        _reject_unsupported(request)
        spec = self.resolve_model(request.model, principal)
        messages = tuple(_flatten(i, m) for i, m in enumerate(request.messages))
        template = get_template(spec.template)
        prompt = template.render(messages)
        return await self._plan(request, principal, spec, [prompt], messages, "messages", template.stop_markers)

    async def plan_completion(self, request: CompletionRequest, principal: Principal) -> Plan:
        _reject_unsupported(request)
        spec = self.resolve_model(request.model, principal)
        prompts = _prompt_list(request.prompt)
        if len(prompts) * (request.n or 1) > MAX_PROMPTS:
            raise InvalidRequest(f"At most {MAX_PROMPTS} choices (prompts x n) per request.", param="prompt")
        stops = get_template(spec.template).stop_markers
        return await self._plan(request, principal, spec, prompts, None, "prompt", stops, echo=bool(request.echo))

    async def _plan(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        principal: Principal,
        spec: ModelSpec,
        prompts: list[str],
        messages: tuple[ChatMessage, ...] | None,
        prompt_param: str,
        markers: Sequence[str],
        *,
        echo: bool = False,
    ) -> Plan:
        counter = self.model_counters.get(spec.id, self.counter)
        counts = tuple([await counter.count_async(p) for p in prompts])
        max_tokens = self._max_tokens(request.output_limit(), principal, spec, max(counts), prompt_param)
        params = GenerationParams(
            max_new_tokens=max_tokens,
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
            seed=request.seed,
        )
        options = request.stream_options
        return Plan(
            model=spec,
            prompts=tuple(prompts),
            prompt_tokens=counts,
            messages=messages,
            n=request.n or 1,
            params=params,
            stops=tuple(dict.fromkeys([*request.stop_list(), *markers])),
            echo=echo,
            include_usage=bool(request.stream and options is not None and options.include_usage),
        )

    def _max_tokens(
        self, requested: int | None, principal: Principal, spec: ModelSpec, prompt_tokens: int, prompt_param: str
    ) -> int:
        cap = min(self.settings.tier_max_tokens(principal.tier), spec.max_output_tokens)
        room = spec.context_length - prompt_tokens
        if room <= 0:
            raise InvalidRequest(
                f"The prompt is {prompt_tokens} tokens; '{spec.id}' takes at most {spec.context_length}.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if requested is None:
            return min(cap, room)
        if requested > cap:
            raise InvalidRequest(
                f"max_tokens is {requested}, above the limit of {cap} for the {principal.tier} tier "
                f"on '{spec.id}'. Ask for at most {cap}.",
                param="max_tokens",
            )
        if requested > room:
            raise InvalidRequest(
                f"The prompt ({prompt_tokens} tokens) plus max_tokens ({requested}) exceeds the context "
                f"length of '{spec.id}' ({spec.context_length}). Lower max_tokens to at most {room}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    # --- running --------------------------------------------------------------------------------------------

    def require_nodes(self, plan: Plan) -> None:
        """Fail with 503 before anything is sent when no node could serve the plan."""
        self.pool.require_candidates(plan.model.id)

    async def complete(
        self, plan: Plan, results: list[ChoiceResult] | None = None
    ) -> tuple[list[ChoiceResult], Usage]:
        """Every choice, generated concurrently. `results` (from `new_results`) fills in as choices finish, so a
        caller that cancels this can still account for the tokens produced."""
        results = self.new_results(plan) if results is None else results
        if len(results) == 1:  # the usual case: no task of its own
            await self._collect(plan, results[0])
            return results, self.usage(plan, results)
        tasks = [asyncio.ensure_future(self._collect(plan, result)) for result in results]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            # Until each has stopped: the tokens its node produced are in `results` only then.
            await asyncio.gather(*tasks, return_exceptions=True)
        return results, self.usage(plan, results)

    def new_results(self, plan: Plan) -> list[ChoiceResult]:
        return [ChoiceResult(index=i) for i in range(plan.choice_count)]

    async def stream(self, plan: Plan, results: list[ChoiceResult]) -> AsyncGenerator[StreamEvent, None]:
        """Choices one after another (OpenAI allows any interleaving by index), then the usage.

        `results` fills in as the stream goes, so a caller can account for a stream cut short."""
        for result in results:
            async with aclosing(self.run_choice(plan, result)) as pieces:
                async for text in pieces:
                    yield Delta(result.index, text)
            yield Finished(result.index, result.finish_reason)
        yield self.usage(plan, results)

    async def _collect(self, plan: Plan, result: ChoiceResult) -> None:
        async with aclosing(self.run_choice(plan, result)) as pieces:
            result.text = "".join([piece async for piece in pieces])

    async def run_choice(self, plan: Plan, result: ChoiceResult) -> AsyncGenerator[str, None]:
        """Yield the text of one choice; fills `result` in as it finishes."""
        prompt_index = result.index // plan.n
        if plan.echo:
            yield plan.prompts[prompt_index]
        request = NodeRequest(
            model=plan.model.node_model,
            prompt=plan.prompts[prompt_index],
            prompt_tokens=plan.prompt_tokens[prompt_index],
            params=plan.params,
            stops=plan.stops,
            messages=plan.messages,
        )
        scanner, joiner = StopScanner(plan.stops), SurrogateJoiner()
        stats = GenerationStats()
        try:
            async with aclosing(self.pool.generate(plan.model.id, request, stats)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is not None:
                        result.finish_reason = chunk.finish_reason
                    if chunk.text and (text := scanner.feed(joiner.feed(chunk.text))):
                        telemetry.note_first_token()
                        yield text
                    if scanner.stopped:
                        result.finish_reason = "stop"
                        break
            if tail := scanner.feed(joiner.finish()) + scanner.finish():
                telemetry.note_first_token()
                yield tail
        finally:
            result.completion_tokens = stats.completion_tokens
            result.nodes = stats.nodes
            telemetry.note_choice(stats)  # tokens, nodes, failovers and continuations, for logs and metrics

    def usage(self, plan: Plan, results: Sequence[ChoiceResult]) -> Usage:
        return Usage(sum(plan.prompt_tokens), sum(r.completion_tokens for r in results))


def _reject_unsupported(request: ChatCompletionRequest | CompletionRequest) -> None:
    problem = unsupported_parameter(request)
    if problem is not None:
        param, message = problem
        raise InvalidRequest(message, param=param, code="unsupported_parameter")


def _flatten(index: int, message: ChatMessageIn) -> ChatMessage:
    content = message.content
    if content is None:
        return ChatMessage(role=message.role, content="")
    if isinstance(content, str):
        return ChatMessage(role=message.role, content=content)
    texts: list[str] = []
    for part_index, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"Only text content parts are supported; part {part_index} of message {index} is "
                f"'{part.get('type')}'.",
                param=f"messages[{index}].content[{part_index}]",
                code="unsupported_content",
            )
        texts.append(part["text"])
    return ChatMessage(role=message.role, content="".join(texts))


def _prompt_list(prompt: str | list[str] | list[int] | list[list[int]] | None) -> list[str]:
    if prompt is None:
        return [""]
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must not be an empty list.", param="prompt")
    if all(isinstance(item, str) for item in prompt):
        return [str(item) for item in prompt]
    raise InvalidRequest(
        "Token-id prompts are not supported: node models use their own tokenizers. Send text.", param="prompt"
    )
