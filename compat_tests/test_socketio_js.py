"""The original README's Socket.IO example (examples/socketio_client.js), run by Node with the npm
`socket.io-client` package against a live `openai-proxy serve` over devnodes.

The example is run as written: only PLUMISE_TOKEN and PLUMISE_URL come from the test. Its model,
`meta-llama/Llama-3.1-8B`, is the original README's: the built-in catalogue keeps it as an alias of
`meta-llama/Llama-3.1-8B-Instruct`, so the session's ordinary gateway serves it.
The npm packages come from compat_tests/js (`npm ci` in .ci/services); the example is copied next to a
`node_modules` link, because Node resolves ESM imports from the importing file's folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .support import Gateway, reference

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "socketio_client.js"
NODE_MODULES = REPO / "compat_tests" / "js" / "node_modules"
RUN_TIMEOUT = 60

def node_exe() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: `bash .ci/services` installs Node.js")
    return exe


@pytest.fixture(scope="module")
def readme_gateway(gateway: Gateway) -> Gateway:
    """The session's gateway, with its built-in catalogue: nothing configured for the old example."""
    return gateway


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (NODE_MODULES / "socket.io-client").is_dir():
        pytest.fail(f"{NODE_MODULES} has no socket.io-client: run `bash .ci/services` (npm ci in compat_tests/js)")
    folder = tmp_path_factory.mktemp("socketio-example")
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    (folder / "package.json").write_text(json.dumps({"private": True, "type": "module"}))
    (folder / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    return folder


def run_example(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node_exe(), EXAMPLE.name], cwd=folder, env={"PATH": "/usr/bin:/bin", **env}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )


def test_the_readme_example_streams_the_answer_and_finishes(readme_gateway: Gateway, example_dir: Path) -> None:
    run = run_example(example_dir, PLUMISE_TOKEN=readme_gateway.free_key, PLUMISE_URL=readme_gateway.url)
    assert run.returncode == 0, f"stdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr}"
    assert run.stdout == reference("Write a story about AI.", 1024) + "\nDone!\n"
    assert run.stderr == ""


def test_socket_io_client_sees_why_a_connection_is_refused(readme_gateway: Gateway) -> None:
    refused = connect_error(readme_gateway.url, "not-a-jwt")
    assert refused["data"] == {"code": 401} and "token is invalid" in refused["message"]
    assert connect_error(readme_gateway.url, readme_gateway.free_key) == {"connected": True}


def connect_error(url: str, token: str) -> dict[str, object]:
    """What compat_tests/js/connect_error.js prints: the `connect_error` payload, or {"connected": true}."""
    script = REPO / "compat_tests" / "js" / "connect_error.js"
    run = subprocess.run([node_exe(), str(script)], env={"PATH": "/usr/bin:/bin", "PLUMISE_URL": url,
                         "PLUMISE_TOKEN": token}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout)
    return result
