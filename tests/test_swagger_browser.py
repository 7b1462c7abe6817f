"""Swagger UI in a real browser: Debian's headless Chromium, driven by playwright (never `playwright install`).

The page must list the operations, take a JWT in its Authorize dialog, and "Try it out" on GET /v1/models must
show 401 before authorizing and 200 after. A screenshot is left in the temp directory for a human to look at.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(tempfile.gettempdir()) / "openai-proxy-swagger.png"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by .ci/services")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def execute(page: Page, block: str, expected: str) -> None:
    """Press Execute in an expanded operation; the page must then show the `expected` status code."""
    operation = page.locator(block)
    await operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    await expect(status).to_have_text(expected, timeout=15_000)


async def test_swagger_ui_lists_operations_authorizes_and_tries_get_models(  # type: ignore[no-untyped-def]
    start_devnode, start_gateway, browser: Browser
) -> None:
    node = await start_devnode()
    gateway = await start_gateway([node.url])
    page = await browser.new_page(viewport={"width": 1280, "height": 1600})
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    await page.goto(f"{gateway.url}/api/docs")

    paths = page.locator(".opblock-summary-path")
    await expect(paths.first).to_be_visible(timeout=15_000)
    listed = {text.strip().replace("\u200b", "") for text in await paths.all_inner_texts()}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}",
            "/api/v1/auth/nonce", "/health", "/metrics"} <= listed

    block = "#operations-OpenAI-get_v1_models"
    await page.locator(f"{block} .opblock-summary").click()
    await page.locator(f"{block} button.try-out__btn").click()
    await execute(page, block, "401")  # no token yet: the route really is protected

    await page.locator("button.authorize").first.click()
    dialog = page.locator(".modal-ux")
    await dialog.locator("input").first.fill(gateway.token())
    await dialog.locator("button.authorize").click()
    await dialog.locator("button.btn-done").click()
    await execute(page, block, "200")
    body = page.locator(f"{block} .live-responses-table .response-col_description pre").first
    await expect(body).to_contain_text('"object": "list"')
    await page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert failed == []  # every asset came from the gateway itself
