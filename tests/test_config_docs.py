"""Every setting is documented in the README's configuration table and in .env.example."""

from __future__ import annotations

from openai_proxy.settings import Settings

from .conftest import REPO


def test_every_setting_is_in_the_readme_and_env_example() -> None:
    readme = (REPO / "README.md").read_text()
    example = (REPO / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme, f"{name.upper()} missing from README.md (scripts/settings_table.py)"
        assert f"{name.upper()}=" in example, f"{name.upper()} missing from .env.example"
