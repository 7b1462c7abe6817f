"""Every script in examples/ (*.py and *.sh) runs against the live gateway, exits 0 and prints something.

Examples are collected automatically, so a new one is tested without touching this file. None is skipped: an
example that needs something the fixtures do not provide fails here, which is the cue to extend the fixtures.
The scripts run concurrently (one interpreter start each), then each test checks its own result.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import FREE_MODEL, Gateway, clean_env

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted([*EXAMPLES_DIR.glob("*.py"), *EXAMPLES_DIR.glob("*.sh")])
RUN_TIMEOUT = 60


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def command(example: Path) -> list[str]:
    if example.suffix == ".py":
        return [sys.executable, str(example)]
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to run the shell examples"
    return [bash, str(example)]


@pytest.fixture(scope="module")
def runs(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    workdir = tmp_path_factory.mktemp("examples")
    env = clean_env(OPENAI_BASE_URL=gateway.base_url, OPENAI_API_KEY=gateway.free_key, OPENAI_MODEL=FREE_MODEL)
    started = {
        example.name: subprocess.Popen(
            command(example),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=workdir,
        )
        for example in EXAMPLES
    }
    results: dict[str, Run] = {}
    try:
        for name, process in started.items():
            try:
                stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                stderr += f"\n<killed after {RUN_TIMEOUT} s>"
            results[name] = Run(process.returncode, stdout, stderr)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def test_examples_exist() -> None:
    names = {example.name for example in EXAMPLES}
    assert {"openai_sync.py", "openai_async.py", "openai_streaming.py", "langchain_chat.py",
            "llamaindex_chat.py", "curl_stream.sh"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_example_runs(example: Path, runs: dict[str, Run]) -> None:
    run = runs[example.name]
    assert run.returncode == 0, f"{example.name} exited {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.stdout.strip(), f"{example.name} printed nothing\nstderr:\n{run.stderr}"
    if example.suffix == ".sh":
        assert run.stdout.rstrip().endswith("data: [DONE]"), run.stdout[-500:]
