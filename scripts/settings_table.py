"""Print the README's configuration table and a .env.example from Settings (run after adding a setting)."""

from __future__ import annotations

import sys

from pydantic_core import PydanticUndefined

from openai_proxy.settings import Settings


def rows() -> list[tuple[str, str, str]]:
    result = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is PydanticUndefined or default is None:
            shown = ""
        elif isinstance(default, list):
            shown = ",".join(default)
        else:
            shown = str(default).lower() if isinstance(default, bool) else str(default)
        result.append((name.upper(), shown, field.description or ""))
    return result


def markdown() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {f'`{default}`' if default else '—'} | {meaning} |" for name, default, meaning in rows()]
    return "\n".join(lines)


def dotenv() -> str:
    lines = ["# openai-proxy configuration. Every variable is optional unless marked required.", ""]
    for name, default, meaning in rows():
        lines.append(f"# {meaning}")
        lines.append(f"{'' if name in ('JWT_SECRET', 'NODE_URLS') else '# '}{name}={default}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(dotenv() if sys.argv[1:] == ["--env"] else markdown())
