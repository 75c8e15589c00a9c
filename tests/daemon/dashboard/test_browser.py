"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real daemon and the
hosted stand-in. Each page's screenshot is saved with the test output (the path is printed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon
from tests.support.system import require_executable, require_module

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
TIMEOUT = 20.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# A stable place to look at the screenshots after a run (they are in the test's tmp dir too).
SHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS", Path(tempfile.gettempdir()) / "llmtune-dashboard-screenshots"))
ORIGINAL = "line one\nline two\r\nno newline at the end, ünïcode".encode()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    chromium = require_executable("chromium")
    require_module("playwright.async_api")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "notes.txt").write_bytes(ORIGINAL)
    return root


@pytest.fixture
async def daemon(start_daemon: StartDaemon, standin: StandIn, project: Path) -> Daemon:
    config = (f'[workspaces.default]\nroot = "{project}"\ntools = "execute"\n'
              "[jobs]\npoll_interval = 0.05\nmax_poll_interval = 0.2\n")
    return await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url})


class Seen:
    """Every response the browser got, to show that no key or control token ever reached it."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.headers: dict[str, dict[str, str]] = {}

    async def on_response(self, response: Any) -> None:
        self.headers[response.url] = await response.all_headers()
        if "text/event-stream" in self.headers[response.url].get("content-type", ""):
            return
        try:
            self.bodies.append((response.url, await response.body()))
        except Exception:  # redirects and aborted loads have no body
            self.bodies.append((response.url, b""))

    def assert_no_secret(self, daemon: Daemon) -> None:
        for url, body in self.bodies:
            assert WORKSPACE_KEY.encode() not in body, url
            assert b"sk_test_from_the_settings_page" not in body, url
            assert daemon.control_token.encode() not in body, url
            assert b"sk_" not in body or url.endswith("app.js"), url  # app.js only names the prefix


async def logged_in_page(browser: Any, daemon: Daemon, seen: Seen | None = None) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=daemon.url)
    page = await context.new_page()
    if seen is not None:
        page.on("response", seen.on_response)
    async with aiohttp.ClientSession() as http, http.post(
        daemon.url + "/companion/v1/dashboard/link", headers=daemon.auth(daemon.control_token)
    ) as response:
        link = (await response.json())["url"]
    await page.goto(link)
    assert page.url == daemon.url + "/dashboard/"
    await page.wait_for_selector("#live.on", timeout=TIMEOUT * 1000)
    return page


async def shoot(page: Any, tmp_path: Path, name: str) -> None:
    target = tmp_path / "screenshots" / f"{name}.png"
    target.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(target), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(target, SHOTS / target.name)
    print(f"screenshot: {SHOTS / target.name}")


async def chat(daemon: Daemon) -> asyncio.Task[Any]:
    client = daemon.openai(timeout=60)
    return asyncio.create_task(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "please change the notes"}]))


def tool_results(standin: StandIn) -> list[str]:
    return [m["content"] for r in standin.api.requests if isinstance(r.json, dict)
            for m in r.json.get("messages", []) if m.get("role") == "tool"]


async def test_login_once_and_every_page_shows_live_data(
    browser: Any, daemon: Daemon, standin: StandIn, tmp_path: Path
) -> None:
    seen = Seen()
    page = await logged_in_page(browser, daemon, seen)
    headers = seen.headers[daemon.url + "/dashboard/"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    await page.wait_for_selector("#ov-backends td:has-text('reachable')")
    assert "llmtune" in await page.inner_text("#ov-backends")
    assert MODEL in await page.inner_text("#ov-models")
    assert "execute" in await page.inner_text("#ov-workspaces")
    await shoot(page, tmp_path, "overview")

    # Some activity, so the Activity page has rows and charts, and a fine-tune job for the Jobs page.
    client = daemon.openai()
    for model in ("echo", MODEL, "echo", MODEL, MODEL):
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello there"}])
    async with aiohttp.ClientSession() as http, http.post(
        daemon.url + "/v1/fine-tune", headers=daemon.auth(), json={"base_model": MODEL, "dataset": "s3://b/t.jsonl"}
    ) as response:
        assert response.status in (200, 201, 202), await response.text()
        job = (await response.json())["id"]
    for name in ("approvals", "activity", "changes", "jobs", "connect", "settings"):
        await page.click(f"#nav a[data-page='{name}']")
        await page.wait_for_selector(f"#page-{name}:not([hidden])")
        if name == "activity":
            await page.wait_for_selector("#ac-rows td:has-text('echo')", timeout=TIMEOUT * 1000)
            assert await page.locator("#ch-rpm svg path").count() >= 1
        if name == "jobs":
            await page.wait_for_selector(f"#jb-rows td:has-text('{job}')", timeout=TIMEOUT * 1000)
            standin.api.advance_job(job, "running")  # reaches the open page through the event stream
            await page.wait_for_selector("#jb-events b:has-text('training.started')", timeout=TIMEOUT * 1000)
            await page.wait_for_selector("#jb-rows td:has-text('running')", timeout=TIMEOUT * 1000)
        await page.wait_for_timeout(300)
        await shoot(page, tmp_path, name)

    # Connect: the token only when asked, through the clipboard.
    await page.click("#nav a[data-page='connect']")
    assert daemon.token not in await page.content()
    await page.click("#cn-copy")
    await page.wait_for_selector("#cn-copied:has-text('Copied')")
    assert await page.evaluate("navigator.clipboard.readText()") == daemon.token
    assert daemon.token not in await page.content()

    # Settings: the key field is write-only; the page shows only that a key is set, and where.
    await page.click("#nav a[data-page='settings']")
    replacement = "sk_test_from_the_settings_page_0123456789"
    await page.get_by_label("LLMTune key of default").fill(replacement)
    await page.get_by_role("button", name="Save key").click()
    await page.wait_for_selector("#notice:has-text('key of default is saved')")
    assert daemon.runtime.config.workspaces["default"].api_key == replacement
    assert await page.get_by_label("LLMTune key of default").input_value() == ""
    assert replacement not in await page.content()
    assert "in secrets.json" in await page.inner_text("#st-workspaces")

    # The link was spent: a second browser gets the refusal page, and no session.
    second = await browser.new_context()
    other = await second.new_page()
    login = next(url for url, _ in seen.bodies if "/dashboard/login?code=" in url)
    response = await other.goto(login)
    assert response is not None and response.status == 403
    assert "cannot be used" in await other.inner_text("h1")
    await other.goto(daemon.url + "/dashboard/")
    await other.wait_for_selector("#login:not([hidden])")
    await second.close()
    seen.assert_no_secret(daemon)


async def test_allow_from_the_page_completes_the_request_and_undo_restores_the_file(
    browser: Any, daemon: Daemon, standin: StandIn, project: Path, tmp_path: Path
) -> None:
    seen = Seen()
    page = await logged_in_page(browser, daemon, seen)
    await page.click("#nav a[data-page='approvals']")
    standin.api.script_tool_call("write_file", {"path": "notes.txt", "content": "rewritten by the model\n"})
    task = await chat(daemon)
    card = page.locator("article.approval")
    await card.wait_for(timeout=TIMEOUT * 1000)
    text = await card.inner_text()
    assert "write_file" in text and "notes.txt" in text and "default" in text
    assert await page.locator(".diff .add:has-text('rewritten by the model')").count() == 1
    assert await page.locator(".diff .del:has-text('line one')").count() == 1
    assert "left" in await page.inner_text(".countdown")
    assert not task.done()  # the request waits for the page
    await shoot(page, tmp_path, "approvals-pending")

    await card.get_by_role("button", name="Allow", exact=True).click()
    reply = await asyncio.wait_for(task, TIMEOUT)
    assert reply.choices[0].message.content
    assert (project / "notes.txt").read_bytes() == b"rewritten by the model\n"
    assert any("notes.txt" in result for result in tool_results(standin))
    await page.wait_for_selector("#ap-recent td:has-text('allowed')")

    await page.click("#nav a[data-page='changes']")
    undo = page.locator("#ch-undo button[data-undo]")
    await undo.first.wait_for(timeout=TIMEOUT * 1000)
    await shoot(page, tmp_path, "changes-before-undo")
    await undo.first.click()
    await page.wait_for_selector("#notice:has-text('Restored notes.txt')")
    assert (project / "notes.txt").read_bytes() == ORIGINAL
    await page.wait_for_selector("#ch-undo button:has-text('Undone')")
    seen.assert_no_secret(daemon)


async def test_deny_from_the_page_refuses_the_call_with_the_reason(
    browser: Any, daemon: Daemon, standin: StandIn, project: Path
) -> None:
    page = await logged_in_page(browser, daemon)
    await page.click("#nav a[data-page='approvals']")
    standin.api.script_tool_call("run_terminal", {"command": "echo no > denied.txt"})
    task = await chat(daemon)
    card = page.locator("article.approval")
    await card.wait_for(timeout=TIMEOUT * 1000)
    assert "$ echo no > denied.txt" in await card.inner_text()
    assert f"in {project}" in await card.inner_text()
    await card.get_by_label("Reason").fill("not on my machine")
    await card.get_by_role("button", name="Deny").click()
    reply = await asyncio.wait_for(task, TIMEOUT)
    assert reply.choices[0].message.content
    assert not (project / "denied.txt").exists()
    assert any("not on my machine" in result for result in tool_results(standin))
    await page.wait_for_selector("#ap-recent td:has-text('denied')")


FOREIGN_PAGE = """<!doctype html><html><body>
<form id="form" method="post" action="{daemon}/companion/v1/approvals/{approval}" enctype="text/plain">
<input name='{{"decision": "allow", "x": "' value='"}}'></form></body></html>"""


async def test_a_page_on_another_loopback_port_cannot_use_the_session(
    browser: Any, daemon: Daemon, standin: StandIn, aiohttp_server: Any
) -> None:
    page = await logged_in_page(browser, daemon)
    standin.api.script_tool_call("run_terminal", {"command": "echo foreign > foreign.txt"})
    task = await chat(daemon)
    async with asyncio.timeout(TIMEOUT):
        while not daemon.runtime.approvals.pending():
            await asyncio.sleep(0.05)
    approval = daemon.runtime.approvals.pending()[0]["id"]

    foreign = web.Application()
    html = FOREIGN_PAGE.format(daemon=daemon.url, approval=approval)

    async def foreign_page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    foreign.router.add_get("/", foreign_page)
    server = await aiohttp_server(foreign)
    foreign_url = str(server.make_url("/"))
    assert foreign_url.startswith("http://127.0.0.1:") and foreign_url != daemon.url + "/"

    # Same browser, same cookie jar: the session cookie exists for 127.0.0.1.
    evil = await page.context.new_page()
    await evil.goto(foreign_url)
    read = await evil.evaluate("""async (url) => {
        try { const r = await fetch(url + '/companion/v1/status', {credentials: 'include'});
              return 'read ' + r.status + ' ' + await r.text(); }
        catch (e) { return 'refused: ' + e.name; } }""", daemon.url)
    assert read.startswith("refused"), read
    act = await evil.evaluate("""async ([url, id]) => {
        try { const r = await fetch(url + '/companion/v1/approvals/' + id, {method: 'POST', credentials: 'include',
                mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body: '{"decision": "allow"}'});
              return 'sent ' + r.type; }
        catch (e) { return 'refused: ' + e.name; } }""", [daemon.url, approval])
    assert act in ("sent opaque",) or act.startswith("refused"), act
    async with evil.expect_navigation():
        await evil.evaluate("document.getElementById('form').submit()")
    assert "origin_not_allowed" in await evil.content()
    # Nothing the foreign page did decided anything.
    assert [item["id"] for item in daemon.runtime.approvals.pending()] == [approval]
    assert not task.done()

    await page.click("#nav a[data-page='approvals']")
    await page.locator("article.approval").get_by_role("button", name="Deny").click()
    await asyncio.wait_for(task, TIMEOUT)


async def test_allow_and_remember_saves_a_rule(browser: Any, daemon: Daemon, standin: StandIn, project: Path) -> None:
    page = await logged_in_page(browser, daemon)
    await page.click("#nav a[data-page='approvals']")
    standin.api.script_tool_call("write_file", {"path": "made.txt", "content": "new file\n"})
    task = await chat(daemon)
    card = page.locator("article.approval")
    await card.wait_for(timeout=TIMEOUT * 1000)
    await card.get_by_role("button", name="Allow and remember").click()
    await asyncio.wait_for(task, TIMEOUT)
    assert (project / "made.txt").read_text() == "new file\n"
    await page.wait_for_selector("#ap-recent td:has-text('allowed, remembered')")
    assert "write_file(" in daemon.paths.config_file.read_text()
