"""The model catalogue: built-in entries and JSON/TOML files that replace them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from openai_proxy.catalog import Catalog, ModelSpec, builtin_catalog, load_catalog
from openai_proxy.templates import TEMPLATE_NAMES

BUILTIN = {
    "bigscience/bloom-560m": ("plain", 2048, "free", 2048),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama3", 131072, "free", 4096),
    "mistralai/Mistral-7B-Instruct-v0.2": ("mistral", 32768, "free", 4096),
    "qwen/qwen3-32b": ("chatml", 32768, "free", 4096),
    "meta-llama/Llama-3.1-70B-Instruct": ("llama3", 131072, "pro", 4096),
    "qwen/qwen3.5-397b-a17b": ("chatml", 262144, "pro", 4096),
}


def test_builtin_entries() -> None:
    catalog = builtin_catalog()
    assert catalog.ids == tuple(BUILTIN)
    assert len(catalog) == len(BUILTIN)
    for spec in catalog:
        assert (spec.template, spec.context_length, spec.tier, spec.max_output_tokens) == BUILTIN[spec.id]
        assert spec.owned_by == spec.id.split("/")[0]
        assert spec.node_model == spec.id
        assert spec.description
        assert spec.created > 1_600_000_000
    assert load_catalog(None).ids == catalog.ids


def test_get_and_contains() -> None:
    catalog = builtin_catalog()
    spec = catalog.get("qwen/qwen3-32b")
    assert spec is not None and spec.template == "chatml"
    assert catalog.get("gpt-4") is None
    assert "qwen/qwen3-32b" in catalog
    assert "gpt-4" not in catalog


def test_specs_are_immutable() -> None:
    spec = builtin_catalog().get("qwen/qwen3-32b")
    assert spec is not None
    with pytest.raises(ValidationError):
        setattr(spec, "tier", "pro")  # noqa: B010 (plain assignment is a type error on a frozen model)


def test_spec_defaults_and_validation() -> None:
    spec = ModelSpec.model_validate(
        {
            "id": "org/m",
            "template": "plain",
            "context_length": 100,
            "tier": "free",
            "max_output_tokens": 10,
            "created": 1,
        }
    )
    assert (spec.node_model, spec.owned_by, spec.description, spec.tokenizer) == ("org/m", "org", "", None)
    with pytest.raises(ValidationError, match="unknown chat template 'nope'"):
        ModelSpec.model_validate({**spec.model_dump(), "template": "nope"})
    with pytest.raises(ValidationError, match="exceeds context_length"):
        ModelSpec.model_validate({**spec.model_dump(), "max_output_tokens": 101})
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({**spec.model_dump(), "tier": "gold"})


def test_catalog_rejects_duplicates() -> None:
    spec = builtin_catalog().get("qwen/qwen3-32b")
    assert spec is not None
    with pytest.raises(ValueError, match="duplicate model id 'qwen/qwen3-32b'"):
        Catalog([spec, spec])


def _entry(model_id: str, **extra: object) -> dict[str, object]:
    return {
        "id": model_id,
        "template": "chatml",
        "context_length": 8192,
        "tier": "pro",
        "max_output_tokens": 1024,
        "created": 1700000000,
        **extra,
    }


def test_json_file_replaces_builtins(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [_entry("a/one", node_model="one-on-nodes"), _entry("b/two")]}))
    catalog = load_catalog(str(path))
    assert catalog.ids == ("a/one", "b/two")
    one = catalog.get("a/one")
    assert one is not None and one.node_model == "one-on-nodes" and one.owned_by == "a"
    assert catalog.get("qwen/qwen3-32b") is None


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nid = "x/y"\ntemplate = "llama3"\ncontext_length = 4096\ntier = "free"\n'
        'max_output_tokens = 512\ncreated = 1\nowned_by = "someone"\ntokenizer = "cl100k_base"\n'
    )
    spec = load_catalog(path).get("x/y")
    assert spec is not None
    assert (spec.template, spec.owned_by, spec.tokenizer) == ("llama3", "someone", "cl100k_base")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("m.json", "{not json", "Expecting property name"),
        ("m.toml", "[[models]\n", "Expected"),
        ("m.yaml", "models: []", "unsupported file type '.yaml'"),
        ("m.json", '{"model": []}', 'expected a top-level "models" list'),
        ("m.json", "[]", 'expected a top-level "models" list'),
        ("m.json", '{"models": []}', "empty"),
        (
            "m.json",
            json.dumps({"models": [_entry("a/b", template="gpt")]}),
            r"models\[0\] \('a/b'\).*unknown chat",
        ),
        ("m.json", json.dumps({"models": [_entry("a/b"), _entry("a/b")]}), "duplicate model id 'a/b'"),
        ("m.json", json.dumps({"models": [_entry("a/b", color="red")]}), "color: Extra inputs"),
        ("m.json", json.dumps({"models": [{"id": "a/b"}]}), "template: Field required"),
        ("m.json", json.dumps({"models": ["a/b"]}), r"models\[0\]"),
    ],
)
def test_bad_files_raise_value_error_naming_file_and_problem(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        load_catalog(str(path))
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ValueError, match="absent.json"):
        load_catalog(str(path))


def test_every_builtin_template_exists() -> None:
    assert {spec.template for spec in builtin_catalog()} == set(TEMPLATE_NAMES)


def test_the_original_services_model_ids_are_aliases_of_the_instruct_models() -> None:
    catalog = load_catalog(None)
    assert catalog.get("meta-llama/Llama-3.1-8B") is catalog.get("meta-llama/Llama-3.1-8B-Instruct")
    assert catalog.get("meta-llama/Llama-3.1-70B") is catalog.get("meta-llama/Llama-3.1-70B-Instruct")
    assert "meta-llama/Llama-3.1-8B" not in catalog.ids  # listed once, under its own id


def test_an_alias_may_not_shadow_another_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    entry = {"template": "plain", "context_length": 10, "tier": "free", "max_output_tokens": 5, "created": 0}
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [{"id": "a/one", **entry}, {"id": "b/two", "aliases": ["a/one"], **entry}]}))
    with pytest.raises(ValueError, match="alias 'a/one'"):
        load_catalog(path)
