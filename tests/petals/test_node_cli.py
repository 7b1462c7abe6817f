"""The petals-node command from the gateway's own environment, which has no torch: it is optional there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openai_proxy.cli import main


def test_the_gateway_never_imports_the_petals_stack() -> None:
    probe = ("import sys, openai_proxy.cli, openai_proxy.app, openai_proxy.petals_node.app; "
             "print(sorted({'torch', 'petals', 'transformers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_petals_node_is_a_subcommand(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exited:
        main(["petals-node", "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--model", "--initial-peers", "--dht-prefix", "--name", "--host", "--port"):
        assert flag in usage


def test_a_node_that_cannot_load_its_model_exits_with_status_1() -> None:
    # No torch here: loading fails, /health would say "failed", and the process ends instead of serving.
    result = subprocess.run(
        [sys.executable, "-m", "openai_proxy.petals_node", "--model", "nowhere/model", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "cannot load nowhere/model" in result.stderr
