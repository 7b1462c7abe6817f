"""Profile the gateway under load with py-spy, and print where its time goes.

    python -m bench.profile                      # scenario (a): non-streaming, 32 connections, free wallet
    python -m bench.profile --stream --seconds 20  # scenario (b): 64 streams of 256 tokens
    python -m bench.profile --large              # scenario (d): small requests next to 50k-token prompts

Starts a devnode and the gateway (as `python -m bench.run` does), drives the gateway with wrk (or the Python
generator) while `py-spy record --format raw` samples it, then prints the top functions by self time and by
inclusive time, and self time by package. The raw collapsed stacks stay in `--out` (speedscope.app and
flamegraph.pl read them). Needs py-spy (`pip install -e .[bench]`) and permission to ptrace (root here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from . import load
from .stack import StackOptions, Target, chat_body, start_stack
from .wrk import run_wrk, wrk_path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def _frame_key(frame: str) -> tuple[str, str]:
    """(function, shortened file) of one collapsed-stack frame, line numbers dropped."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    file = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return match["func"], file


def _package(file: str) -> str:
    if not file:
        return "(other)"
    if "/" not in file:
        return f"stdlib:{file.removesuffix('.py')}"
    head = file.split("/", 1)[0]
    return f"stdlib:{head}" if head in ("asyncio", "json", "logging", "concurrent", "email") else head


def summarize(raw: str, top: int = 25) -> str:
    """Self and inclusive time per function, and self time per package, from py-spy's collapsed stacks."""
    own: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_key(frame) for frame in stack.split(";") if "(" in frame]
        if not frames:
            continue
        own[frames[-1]] += count
        packages[_package(frames[-1][1])] += count
        for key in set(frames):
            inclusive[key] += count
    if total == 0:
        return "no samples (was the gateway busy? does py-spy have ptrace permission?)"

    def table(counter: Counter[tuple[str, str]]) -> str:
        return "\n".join(f"  {100 * n / total:5.1f}%  {func}  ({file})" for (func, file), n in counter.most_common(top))

    by_package = "\n".join(f"  {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common(top))
    return (f"{total} samples\n\nself time by function:\n{table(own)}\n\ninclusive time by function:\n"
            f"{table(inclusive)}\n\nself time by package:\n{by_package}")


async def drive(target: Target, args: argparse.Namespace, workdir: Path) -> None:
    if args.large:
        from .run import large_prompt  # only this mode needs the 50k-token prompt

        large = target.request(chat_body(1, content=large_prompt(50_000)))
        await asyncio.gather(
            load.paced_loop("127.0.0.1", target.port, target.request(chat_body(16)), connections=4, rate=200.0,
                            duration=args.seconds + 1),
            load.paced_loop("127.0.0.1", target.port, large, connections=2, rate=4.0, duration=args.seconds + 1),
        )
    elif args.stream:
        await load.stream_loop("127.0.0.1", target.port, target.request(chat_body(256, stream=True)),
                               streams=64, duration=args.seconds + 1)
    elif wrk_path() is not None:
        body_file = workdir / "body.json"
        body_file.write_text(json.dumps(chat_body(16)))
        await run_wrk(target, body_file, connections=args.connections, seconds=int(args.seconds) + 1)
    else:
        await load.closed_loop("127.0.0.1", target.port, target.request(chat_body(16)),
                               connections=args.connections, duration=args.seconds + 1)


async def profile(args: argparse.Namespace) -> str:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    workdir = Path(tempfile.mkdtemp(prefix="openai-proxy-profile-"))
    options = StackOptions(workdir=workdir, logdir=args.out.parent / "profile-logs", litellm=False, aiohttp=False)
    stack = await start_stack("profile", 0.0, options)
    try:
        target = next(t for t in stack.targets if t.name == f"gateway ({args.wallet})")
        record = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(target.server.pid), "--rate", str(args.rate), "--duration",
            str(int(args.seconds)), "--format", "raw", "--output", str(args.out), "--nonblocking", "--full-filenames",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        await drive(target, args, workdir)
        _, err = await asyncio.wait_for(record.communicate(), args.seconds + 30)
        if record.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode()[-500:]}")
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return summarize(args.out.read_text(), args.top)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wallet", choices=["free", "pro"], default="free")
    parser.add_argument("--stream", action="store_true", help="profile scenario (b) instead of (a)")
    parser.add_argument("--large", action="store_true", help="profile scenario (d) instead of (a)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile.txt"),
                        help="where the raw collapsed stacks go")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(asyncio.run(profile(args)))
    print(f"\nraw stacks: {args.out}")


if __name__ == "__main__":
    main()
