"""Turning scenario results into the one table, the JSON file, and the issue's targets checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .scenarios import Metrics
from .stack import DIRECT

Results = dict[str, dict[str, Metrics]]  # scenario -> target -> metrics

COLUMNS = ("scenario", "target", "req/s", "p50 ms", "p99 ms", "+p50 ms", "TTFT p50", "+TTFT", "tok/s",
           "streams", "large/s", "RSS MB", "errors")


def add_overheads(results: Results) -> None:
    """Latency each target adds over the node itself, measured in the same scenario."""
    for by_target in results.values():
        direct = by_target.get(DIRECT)
        if direct is None:
            continue
        for metrics in by_target.values():
            for key in ("p50_ms", "p99_ms", "ttft_p50_ms"):
                if key not in metrics:
                    continue
                value, floor = metrics[key], direct.get(key)
                both = isinstance(value, int | float) and isinstance(floor, int | float)
                metrics[f"added_{key}"] = value - floor if both else None  # type: ignore[operator]


def _num(value: float | int | str | None, digits: int = 2) -> str:
    if value is None or isinstance(value, str):
        return "-"
    return f"{value:,.{digits}f}"


def _row(scenario: str, target: str, m: Metrics) -> list[str]:
    streams = "-"
    if "completed" in m:
        streams = f"{m['completed']}/{m['streams']}"
    elif "streams_completed" in m:
        streams = str(m["streams_completed"])
    errors = m.get("failed", m.get("errors"))
    return [
        scenario, target, _num(m.get("rps"), 0), _num(m.get("p50_ms")), _num(m.get("p99_ms")),
        _num(m.get("added_p50_ms")), _num(m.get("ttft_p50_ms")), _num(m.get("added_ttft_p50_ms")),
        _num(m.get("tokens_per_s"), 0), streams, _num(m.get("large_rps"), 1), _num(m.get("peak_rss_mb"), 0),
        _num(errors, 0),
    ]


def rows(results: Results) -> list[list[str]]:
    return [_row(scenario, target, m) for scenario, by_target in results.items() for target, m in by_target.items()]


def text_table(results: Results) -> str:
    table = [list(COLUMNS), *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(table):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def error_notes(results: Results) -> str:
    """One line per scenario and target that saw errors, with the last error message."""
    notes = [f"  {scenario} / {target}: {m.get('errors', m.get('failed'))} errors, last: {m['last_error']}"
             for scenario, by_target in results.items() for target, m in by_target.items() if m.get("last_error")]
    notes += [f"  {scenario} / {target}: the server EXITED (code {m['server_exit_code']}); see its log"
              for scenario, by_target in results.items() for target, m in by_target.items()
              if m.get("server_exit_code") is not None]
    return "\n".join(notes)


def markdown_table(results: Results) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def _get(results: Results, scenario: str, target: str, key: str) -> float | None:
    value = results.get(scenario, {}).get(target, {}).get(key)
    return None if value is None else float(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _check(name: str, value: float | None, passes: Callable[[float], bool], shown: str) -> dict[str, Any]:
    return {"target": name, "value": value, "shown": shown if value is not None else "not measured",
            "ok": None if value is None else passes(value)}


def checks(results: Results, gateway: str, a_high: str, a_low: str, c_streams: int) -> list[dict[str, Any]]:
    """The issue's targets for one gateway row (ratios from this run)."""
    found: list[dict[str, Any]] = []
    lite = "litellm proxy"
    rps = _get(results, a_high, gateway, "rps")
    x = _ratio(rps, _get(results, a_high, lite, "rps"))
    found.append(_check(f"(a) {a_high}: >= 20x LiteLLM req/s", x, lambda v: v >= 20, f"{x or 0:.1f}x"))
    for client in ("httpx", "aiohttp"):
        x = _ratio(rps, _get(results, a_high, f"passthrough ({client})", "rps"))
        found.append(_check(f"(a) {a_high}: >= 0.5x passthrough ({client}) req/s", x, lambda v: v >= 0.5,
                            f"{x or 0:.2f}x"))
    added = _get(results, a_low, gateway, "added_p50_ms")
    found.append(_check(f"(a) {a_low}: <= 1 ms added at p50", added, lambda v: v <= 1, f"{added or 0:.2f} ms"))
    tps = _get(results, "b_streaming", gateway, "tokens_per_s")
    x = _ratio(tps, _get(results, "b_streaming", lite, "tokens_per_s"))
    found.append(_check("(b) >= 10x LiteLLM tokens/s", x, lambda v: v >= 10, f"{x or 0:.1f}x"))
    x = _ratio(tps, _get(results, "b_streaming", DIRECT, "tokens_per_s"))
    found.append(_check("(b) >= 0.5x the node's direct tokens/s", x, lambda v: v >= 0.5, f"{x or 0:.2f}x"))
    added = _get(results, "b_streaming", gateway, "added_ttft_p50_ms")
    found.append(_check("(b) TTFT added <= 2 ms at p50", added, lambda v: v <= 2, f"{added or 0:.2f} ms"))
    done = _get(results, "c_slow_streams", gateway, "completed")
    found.append(_check(f"(c) all {c_streams} streams complete", done, lambda v: v == c_streams,
                        f"{done or 0:.0f}/{c_streams}"))
    rss = _get(results, "c_slow_streams", gateway, "peak_rss_mb")
    found.append(_check("(c) gateway peak RSS < 300 MB", rss, lambda v: v < 300, f"{rss or 0:.0f} MB"))
    p99 = _get(results, "d_large_prompts", gateway, "p99_ms")
    found.append(_check("(d) small requests p99 < 10 ms", p99, lambda v: v < 10, f"{p99 or 0:.2f} ms"))
    return found


def checks_text(found: list[dict[str, Any]]) -> str:
    marks = {True: "PASS", False: "FAIL", None: "n/a "}
    return "\n".join(f"  {marks[item['ok']]}  {item['target']}: {item['shown']}" for item in found)
