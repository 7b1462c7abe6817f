"""Fixtures for the live-swarm tests: a real Petals swarm on this machine, two petals-nodes, one gateway.

The Petals environment. `scripts/install-petals-env.sh` builds it into
`~/.cache/openai-proxy/petals-venv-<hash of the script>` (OPENAI_PROXY_PETALS_CACHE overrides the folder):
outside the repository, stable between runs on one machine, rebuilt when the script changes. A marker file
written last says the build completed; without it the folder is wiped and built again (under an exclusive
file lock, so concurrent runs build once; runs using it hold the lock shared, and venvs of older versions of
the script are deleted when no run holds theirs). This project goes into it with `pip install --no-deps -e`,
and its processes get PYTHONPATH=<this checkout>, so they always run the code under test. If the environment
cannot be built, every test here FAILS with the build log: never skipped.

The network. Every swarm runs in a network namespace made for it (`ip netns add`, only loopback up), because
Petals' p2pd otherwise tries UPnP/NAT-PMP towards the LAN and the servers ask PyPI for their version
(petals-local-swarm.md, error 12); no namespace, no test. Inside it, on its 127.0.0.1, run (with
`ip netns exec`) the Petals servers, both petals-nodes and the gateway (`openai-proxy serve`, a real process
configured by environment and a MODELS_FILE). The test's own clients (the official openai SDK, httpx,
websockets) run on one thread of the pytest process that entered the namespace with setns(2): network
namespaces are per thread, so no veth pair and no address outside loopback is needed, and the clients stay
ordinary in-process objects. `Deployment.run(fn)` runs a function on that thread.

Teardown: SIGTERM then SIGKILL to every process group started, `ip netns delete`, and the
/tmp/hivemind-*.sock files that p2pd leaves behind are removed: those bound in our namespace, never those of
a concurrent run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest

from ..conftest import PRO_WALLET, REPO, make_settings, mint
from .support import MADDR, Netns, Proc, Processes, wait_for

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
INSTALL_SCRIPT = REPO / "scripts" / "install-petals-env.sh"
MODEL = "tiny-llama"  # the catalogue id and the name the petals-nodes publish
DHT_PREFIX = "tiny-llama"
GATEWAY_PORT, NODE_PORTS = 8000, (8101, 8102)  # a fresh namespace per swarm: every port is free
SWARMS = {"one-server": [None], "two-server-chain": ["0:2", "2:4"]}
SERVER_FLAGS = [
    "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--dht_prefix", DHT_PREFIX, "--device", "cpu",
    "--torch_dtype", "float32", "--quant_type", "none", "--throughput", "1", "--no_auto_relay",
    "--inference_max_length", "1024", "--max_batch_size", "1024", "--attn_cache_tokens", "16384",
    "--num_handlers", "2", "--balance_quality", "0.0",
]


# --- the Petals environment ------------------------------------------------------------------------------


def _pip_log(venv: Path) -> Path:
    return venv.parent / f"{venv.name}.log"


def _run_logged(argv: list[str], log: IO[bytes], what: str, log_path: Path) -> None:
    result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                            timeout=1800)
    if result.returncode != 0:
        log.flush()
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
        pytest.fail(f"{what} failed (exit {result.returncode}); log {log_path}:\n{tail}", pytrace=False)


def _prune_old_venvs(root: Path, keep: Path) -> None:
    """Delete venvs built by earlier versions of the script (1.6 GB each), unless a run holds their lock."""
    for old in root.glob("petals-venv-*"):
        if old == keep or not old.is_dir():
            continue
        with (root / f"{old.name}.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            subprocess.run(["rm", "-rf", str(old)], check=False)
            _pip_log(old).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def petals_python() -> Iterator[Path]:
    digest = hashlib.sha256(INSTALL_SCRIPT.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("OPENAI_PROXY_PETALS_CACHE", Path.home() / ".cache" / "openai-proxy"))
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"petals-venv-{digest}"
    marker = venv / ".openai-proxy-complete"
    # A shared lock while in use (so no run prunes it from under another), an exclusive one to build it.
    with (root / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not marker.exists():
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not marker.exists():  # nobody built it while we waited
                _build(venv)
                marker.write_text(f"built by {INSTALL_SCRIPT}\n")
            fcntl.flock(lock, fcntl.LOCK_SH)
        _prune_old_venvs(root, keep=venv)
        yield venv / "bin" / "python"


def _build(venv: Path) -> None:
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    with _pip_log(venv).open("wb") as log:
        _run_logged(["bash", str(INSTALL_SCRIPT), str(venv)], log, "building the Petals venv", _pip_log(venv))
        # The recipe's last step. Its processes also get PYTHONPATH=<this checkout> (petals_env), so a venv built
        # from another checkout of the same script still runs the code under test.
        _run_logged([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)],
                    log, "installing openai-proxy into the Petals venv", _pip_log(venv))


def petals_env(work: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="session")
def tiny_model(petals_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("tiny-llama")
    result = subprocess.run([str(petals_python), str(HERE / "make_tiny_llama.py"), str(target)], capture_output=True,
                            env=petals_env(tmp_path_factory.getbasetemp()), text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"making the tiny model failed:\n{result.stderr[-3000:]}", pytrace=False)
    return target


# --- the reference: plain transformers on the same weights ----------------------------------------------


@dataclass(frozen=True)
class Greedy:
    ids: list[int]  # every generated token, an end-of-sequence token included
    pieces: list[str]  # the text of each token that has text
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Reference:
    proc: subprocess.Popen[str]
    cache: dict[tuple[str, int], Greedy] = field(default_factory=dict)

    def greedy(self, prompt: str, max_new_tokens: int) -> Greedy:
        key = (prompt, max_new_tokens)
        if key not in self.cache:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps({"prompt": prompt, "max_new_tokens": max_new_tokens}) + "\n")
            self.proc.stdin.flush()
            self.cache[key] = Greedy(**json.loads(self.proc.stdout.readline()))
        return self.cache[key]


@pytest.fixture(scope="session")
def reference(petals_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    log = tmp_path_factory.mktemp("reference") / "reference.log"
    with log.open("w") as errors:
        proc = subprocess.Popen([str(petals_python), str(HERE / "reference.py"), str(tiny_model)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                                env=petals_env(log.parent))
    assert proc.stdout is not None
    if not proc.stdout.readline():
        proc.wait(timeout=30)
        pytest.fail(f"the reference process died:\n{log.read_text()[-3000:]}", pytrace=False)
    yield Reference(proc)
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


# --- a swarm, two petals-nodes and a gateway ------------------------------------------------------------


@dataclass
class PetalsNode:
    url: str
    proc: Proc


@dataclass
class Deployment:
    netns: Netns
    gateway_url: str
    token: str
    nodes: list[PetalsNode]
    servers: list[Proc]
    model_dir: Path

    @property
    def v1(self) -> str:
        return f"{self.gateway_url}/v1"

    def run(self, function: Any, *args: Any) -> Any:
        """Run `function(*args)` inside the swarm's network namespace (on the test's namespace thread)."""
        return self.netns.run(function, *args)

    def node_health(self, node: PetalsNode) -> dict[str, Any]:
        return self.run(get_json, f"{node.url}/health")  # type: ignore[no-any-return]


def get_json(url: str) -> Any:
    with httpx.Client(timeout=10) as client:
        return client.get(url).json()


def _get_json_or_none(url: str) -> Any:
    try:
        return get_json(url)
    except (httpx.HTTPError, ValueError):
        return None


@pytest.fixture(scope="module", params=list(SWARMS))
def deployment(request: pytest.FixtureRequest, petals_python: Path, tiny_model: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp(f"swarm-{request.param}")
    netns = Netns(f"oa-petals-{os.getpid()}-{len(SWARMS[request.param])}")
    procs = Processes(work)
    sockets: set[Path] = set()  # ours only: a concurrent run's swarm may be using its own right now
    try:
        deployment = _deploy(netns, procs, petals_python, tiny_model, SWARMS[request.param], work)
        sockets |= netns.socket_files()  # before the failover test kills a node and its daemon
        yield deployment
    finally:
        sockets |= netns.socket_files()
        procs.stop_all()
        netns.delete()
        for path in sockets:
            path.unlink(missing_ok=True)


def _deploy(netns: Netns, procs: Processes, python: Path, model: Path, blocks: list[str | None],
            work: Path) -> Deployment:
    env = petals_env(work)
    node_urls = [f"http://127.0.0.1:{port}" for port in NODE_PORTS]
    gateway = _start_gateway(netns, procs, model, node_urls, work)  # it waits for its nodes by itself
    servers: list[Proc] = []
    nodes: list[PetalsNode] = []
    for index, span in enumerate(blocks):
        joining = ["--new_swarm"] if not servers else ["--initial_peers", MADDR.findall(servers[0].output())[0]]
        placement = ["--block_indices", span] if span else ["--num_blocks", "4"]
        argv = [str(python), "-m", "petals.cli.run_server", str(model), *SERVER_FLAGS, *joining, *placement,
                "--cache_dir", str(work / "cache")]
        server = procs.start(f"server-{index}", netns.command(argv), env)
        wait_for(lambda s=server: "[INFO] Started" in s.output() or None, f"{server.name} to start", 180, (server,))
        servers.append(server)
        if not nodes:  # one peer is all a client needs to find the swarm: load the nodes while it grows
            peer = MADDR.findall(server.output())[0]
            nodes = [_start_node(netns, procs, python, model, peer, url, env) for url in node_urls]
    for node in nodes:
        wait_for(lambda n=node: _status(netns, n.url) == "ok" or None, f"{node.proc.name} to load the model", 120,
                 (node.proc, *servers))
    gateway_url = f"http://127.0.0.1:{GATEWAY_PORT}"

    def both_nodes_healthy() -> bool | None:
        ready = _health(netns, gateway_url, "/ready")
        return ready is not None and ready.get("healthy_nodes", {}).get(MODEL) == len(nodes) or None

    wait_for(both_nodes_healthy, "the gateway to see both nodes", 60, (gateway,))
    token = mint(make_settings(), PRO_WALLET)
    return Deployment(netns, gateway_url, token, nodes, servers, model)


def _health(netns: Netns, url: str, path: str = "/health") -> dict[str, Any] | None:
    data = netns.run(_get_json_or_none, f"{url}{path}")
    return data if isinstance(data, dict) else None


def _status(netns: Netns, url: str) -> str | None:
    health = _health(netns, url)
    return None if health is None else str(health.get("status"))


def _start_node(netns: Netns, procs: Processes, python: Path, model: Path, peer: str, url: str,
                env: dict[str, str]) -> PetalsNode:
    port = url.rpartition(":")[2]
    argv = [str(python), "-m", "openai_proxy.petals_node", "--model", str(model), "--name", MODEL,
            "--initial-peers", peer, "--dht-prefix", DHT_PREFIX, "--host", "127.0.0.1", "--port", port]
    return PetalsNode(url, procs.start(f"petals-node-{port}", netns.command(argv), env))


def _start_gateway(netns: Netns, procs: Processes, model: Path, node_urls: list[str], work: Path) -> Proc:
    catalogue = work / "models.json"
    catalogue.write_text(json.dumps({"models": [{
        "id": MODEL, "node_model": str(model), "template": "plain", "context_length": 1024, "tier": "free",
        "max_output_tokens": 512, "owned_by": "openai-proxy-tests", "created": 0,
        "tokenizer": str(model / "tokenizer.json"), "description": "tiny random Llama (tests)",
    }]}))
    settings = make_settings()
    assert settings.jwt_secret is not None
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"],
        "JWT_SECRET": settings.jwt_secret.get_secret_value(), "PRO_ADDRESSES": PRO_WALLET,
        "NODE_URLS": ",".join(f"petals+ws://{url.removeprefix('http://')}" for url in node_urls),
        "MODELS_FILE": str(catalogue), "HEALTH_CHECK_INTERVAL": "0.5", "LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "openai_proxy", "serve", "--host", "127.0.0.1", "--port", str(GATEWAY_PORT)]
    return procs.start("gateway", netns.command(argv), env, cwd=work)
