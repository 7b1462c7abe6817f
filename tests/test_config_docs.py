"""Every setting is documented in the README's configuration table and in .env.example."""

from __future__ import annotations

import re

import pytest

from openai_proxy.settings import Settings

from .conftest import REPO


def test_every_setting_is_in_the_readme_and_env_example() -> None:
    readme = (REPO / "README.md").read_text()
    example = (REPO / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme, f"{name.upper()} missing from README.md (scripts/settings_table.py)"
        assert f"{name.upper()}=" in example, f"{name.upper()} missing from .env.example"


@pytest.fixture
def no_settings_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.usefixtures("no_settings_in_env")
def test_the_defaults_the_issues_and_the_original_fix() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    fixed = {
        "port": 3200, "host": "0.0.0.0", "chain_id": 41956, "free_tier_limit": 10, "free_tier_window": 3600,
        "free_tier_max_tokens": 2048, "pro_tier_max_tokens": 4096, "node_max_attempts": 3, "node_max_failures": 3,
        "node_cooldown_seconds": 30, "first_token_timeout": 60, "token_idle_timeout": 60,
        "sse_keepalive_seconds": 15, "health_check_interval": 10, "oracle_poll_interval": 30,
        "usage_report_interval": 10, "allow_loopback_nodes": False, "allow_private_ips": True,
        "tier_cache_seconds": 300, "inference_payment_address": "0x5bfb4d6feab6e7ec09edb6044dcafd23bc8c20c5",
        "tiktoken_encoding": "cl100k_base",
    }
    assert {name: getattr(settings, name) for name in fixed} == fixed
    assert settings.jwt_lifetime_seconds == 24 * 3600
    assert settings.origin == "http://localhost:3200"  # PUBLIC_URL's default: SIWE domain and URI
    assert Settings(_env_file=None, port=8000).origin == "http://localhost:8000"  # type: ignore[call-arg]


@pytest.mark.usefixtures("no_settings_in_env")
def test_petals_api_url_alone_is_single_node_mode() -> None:
    settings = Settings(_env_file=None, petals_api_url="petals+ws://10.0.0.5:5000")  # type: ignore[call-arg]
    assert settings.all_node_urls == ["petals+ws://10.0.0.5:5000"]


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    found = re.search(r"^TEST_COMMAND='([^']+)'$", ci, re.MULTILINE)
    assert found is not None and 'bash -c "$TEST_COMMAND"' in ci
    command = found.group(1)
    in_readme = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line]
    assert in_readme == [command]  # the README gives one test command, and it is the one CI runs
    steps = [step.strip() for step in command.split("&&")]
    assert steps[-3:] == ['pip install -e ".[test]"', "bash .ci/services", "python -m pytest -q"]
