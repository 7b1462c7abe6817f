"""The model catalogue: which models the gateway serves and how to prompt them.

The built-in entries can be replaced wholesale by a JSON file ``{"models": [{...}, ...]}`` or a TOML file
with ``[[models]]`` tables; each entry has the fields of ``ModelSpec``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from openai_proxy.templates import TEMPLATE_NAMES

Tier = Literal["free", "pro"]


class ModelSpec(BaseModel):
    """One servable model. ``node_model`` (the name the Petals nodes know) defaults to ``id``;
    ``owned_by`` defaults to the organisation part of ``id`` (before the first "/")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    node_model: str = Field(min_length=1)
    template: str
    context_length: int = Field(gt=0)
    tier: Tier
    max_output_tokens: int = Field(gt=0)
    owned_by: str = Field(min_length=1)
    description: str = ""
    tokenizer: str | None = None
    # Other ids clients may send for this model: the original service's catalogue named base models
    # (`meta-llama/Llama-3.1-8B`) where this one serves their instruct versions, and its clients still send them.
    aliases: tuple[str, ...] = ()
    created: int = Field(ge=0, description="unix seconds; fixed per entry so /v1/models is stable")

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("id"), str):
            model_id: str = data["id"]
            data = {"node_model": model_id, "owned_by": model_id.split("/", 1)[0], **data}
        return data

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in TEMPLATE_NAMES:
            raise ValueError(f"unknown chat template {value!r}; known: {', '.join(TEMPLATE_NAMES)}")
        return value

    @model_validator(mode="after")
    def _output_fits(self) -> ModelSpec:
        if self.max_output_tokens > self.context_length:
            raise ValueError(
                f"max_output_tokens ({self.max_output_tokens}) exceeds context_length ({self.context_length})"
            )
        return self


class Catalog:
    """An immutable, ordered set of ``ModelSpec`` keyed by id."""

    __slots__ = ("_by_id", "_by_alias")

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        by_id: dict[str, ModelSpec] = {}
        by_alias: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.id in by_id or spec.id in by_alias:
                raise ValueError(f"duplicate model id {spec.id!r}")
            by_id[spec.id] = spec
            for alias in spec.aliases:
                if alias in by_id or alias in by_alias:
                    raise ValueError(f"alias {alias!r} of {spec.id!r} is already a model id or alias")
                by_alias[alias] = spec
        self._by_id: Mapping[str, ModelSpec] = MappingProxyType(by_id)
        self._by_alias: Mapping[str, ModelSpec] = MappingProxyType(by_alias)

    def get(self, model_id: str) -> ModelSpec | None:
        """The spec for ``model_id`` (an id or an alias), or None if the gateway does not serve it."""
        return self._by_id.get(model_id) or self._by_alias.get(model_id)

    @property
    def ids(self) -> tuple[str, ...]:
        """Model ids in catalogue order."""
        return tuple(self._by_id)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"Catalog({list(self._by_id)!r})"


# (id, template, context_length, tier, max_output_tokens, created, description); tuples keep it immutable.
_BUILTIN: tuple[tuple[str, str, int, Tier, int, int, str], ...] = (
    (
        "bigscience/bloom-560m",
        "plain",
        2048,
        "free",
        2048,
        1657152000,
        "BLOOM 560M: small multilingual base model, good for smoke tests.",
    ),
    (
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama3",
        131072,
        "free",
        4096,
        1721692800,
        "Llama 3.1 8B Instruct: fast general-purpose assistant.",
    ),
    (
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistral",
        32768,
        "free",
        4096,
        1702252800,
        "Mistral 7B Instruct v0.2: compact instruction-following model.",
    ),
    (
        "qwen/qwen3-32b",
        "chatml",
        32768,
        "free",
        4096,
        1745884800,
        "Qwen3 32B: strong multilingual reasoning and coding model.",
    ),
    (
        "meta-llama/Llama-3.1-70B-Instruct",
        "llama3",
        131072,
        "pro",
        4096,
        1721692800,
        "Llama 3.1 70B Instruct: high-quality general-purpose assistant.",
    ),
    (
        "qwen/qwen3.5-397b-a17b",
        "chatml",
        262144,
        "pro",
        4096,
        1771200000,
        "Qwen3.5 397B-A17B: flagship mixture-of-experts model with a long context.",
    ),
)


def builtin_catalog() -> Catalog:
    """The models the gateway serves when no catalogue file is configured."""
    keys = ("id", "template", "context_length", "tier", "max_output_tokens", "created", "description")
    return Catalog(
        ModelSpec.model_validate({**dict(zip(keys, row, strict=True)), "aliases": _BUILTIN_ALIASES.get(row[0], ())})
        for row in _BUILTIN
    )


# The original service's ids for the models it listed (upstream-protocols.md §9.1).
_BUILTIN_ALIASES: dict[str, tuple[str, ...]] = {
    "meta-llama/Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B",),
    "meta-llama/Llama-3.1-70B-Instruct": ("meta-llama/Llama-3.1-70B",),
}


def _parse(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.loads(text)
    if suffix == ".toml":
        return tomllib.loads(text)
    raise ValueError(f"unsupported file type {suffix or '(none)'!r}; use .json or .toml")


def _entries(document: object) -> list[object]:
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, list):
        raise ValueError('expected a top-level "models" list')
    if not models:
        raise ValueError('the "models" list is empty')
    return models


def _spec(index: int, entry: object) -> ModelSpec:
    try:
        return ModelSpec.model_validate(entry)
    except ValidationError as exc:
        name = entry.get("id") if isinstance(entry, dict) else None
        label = f"models[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'entry'}: {err['msg']}" for err in exc.errors())
        raise ValueError(f"{label}: {problems}") from exc


def load_catalog(path: str | os.PathLike[str] | None) -> Catalog:
    """Load the catalogue: built-ins for ``None``, else the JSON/TOML file at ``path`` (replacing them).

    Every problem (unreadable file, bad syntax, invalid entry, duplicate id) raises ``ValueError``
    naming the file and the problem.
    """
    if path is None:
        return builtin_catalog()
    file = Path(path)
    try:
        return Catalog(_spec(i, entry) for i, entry in enumerate(_entries(_parse(file))))
    except (OSError, ValueError) as exc:
        # JSONDecodeError and TOMLDecodeError are ValueErrors; so are ours from the helpers above.
        raise ValueError(f"model catalogue {file}: {exc}") from exc
