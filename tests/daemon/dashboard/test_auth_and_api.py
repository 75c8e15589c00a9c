"""The dashboard's login, cookie and CSRF rules, and its control endpoints, over plain HTTP on the real daemon."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion.appkeys import DASHBOARD_AUTH
from llmtune_companion.dashboard.auth import COOKIE_NAME, CSRF_HEADER
from llmtune_companion.dashboard.routes import CSP, STATIC

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon

MODEL = "meta-llama/Llama-3.3-70B-Instruct"


@pytest.fixture
async def daemon(start_daemon: StartDaemon, standin: StandIn) -> Daemon:
    return await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})


async def link(daemon: Daemon) -> str:
    async with aiohttp.ClientSession() as http, http.post(
        daemon.url + "/companion/v1/dashboard/link", headers=daemon.auth(daemon.control_token)
    ) as response:
        assert response.status == 200
        body = await response.json()
    url: str = body["url"]
    assert url.startswith(daemon.url + "/dashboard/login?code=")
    return url


async def login(daemon: Daemon) -> str:
    """A live session id, got the way a browser gets it."""
    async with aiohttp.ClientSession() as http, http.get(await link(daemon), allow_redirects=False) as response:
        assert response.status == 303
        morsel = SimpleCookie(response.headers["Set-Cookie"])[COOKIE_NAME]
        return morsel.value


def assert_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "details"}
    assert body["error"]["code"] == code, body


async def call(daemon: Daemon, method: str, path: str, *, session: str | None = None,
               headers: dict[str, str] | None = None, json: Any = None) -> tuple[int, Any, aiohttp.ClientResponse]:
    sent = dict(headers or {})
    if session is not None:
        sent["Cookie"] = f"{COOKIE_NAME}={session}"
    async with aiohttp.ClientSession() as http, http.request(method, daemon.url + path, headers=sent, json=json,
                                                             allow_redirects=False) as response:
        raw = await response.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw
        return response.status, body, response


def browser_post(daemon: Daemon) -> dict[str, str]:
    """What the dashboard's own page sends with a change."""
    return {"Origin": daemon.url, CSRF_HEADER: "1", "Sec-Fetch-Site": "same-origin"}


async def test_login_link_works_once_and_sets_a_strict_httponly_cookie(daemon: Daemon) -> None:
    url = await link(daemon)
    async with aiohttp.ClientSession() as http:
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/dashboard/"  # the code leaves the address bar
            assert response.headers["Content-Security-Policy"] == CSP
            cookie = response.headers["Set-Cookie"]
            assert f"{COOKIE_NAME}=" in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with http.get(url, allow_redirects=False) as again:
            assert again.status == 403
            assert "Set-Cookie" not in again.headers
            assert "works once" in await again.text()
        async with http.get(daemon.url + "/dashboard/login?code=made-up", allow_redirects=False) as forged:
            assert forged.status == 403


async def test_a_login_code_expires(daemon: Daemon) -> None:
    auth = daemon.app[DASHBOARD_AUTH]
    url = await link(daemon)
    now = auth.clock()
    auth.clock = lambda: now + auth.code_ttl + 1
    status, _, _ = await call(daemon, "GET", url.removeprefix(daemon.url))
    assert status == 403


async def test_the_link_needs_the_control_token_not_a_workspace_token_or_the_session(daemon: Daemon) -> None:
    status, body, _ = await call(daemon, "POST", "/companion/v1/dashboard/link")
    assert status == 401
    assert_error(body, "missing_token")
    status, body, _ = await call(daemon, "POST", "/companion/v1/dashboard/link", headers=daemon.auth())
    assert status == 401
    session = await login(daemon)
    status, body, _ = await call(daemon, "POST", "/companion/v1/dashboard/link", session=session,
                                 headers=browser_post(daemon))
    assert status == 403
    assert_error(body, "token_required")


async def test_the_cookie_grants_the_control_api_and_never_the_model_api(daemon: Daemon) -> None:
    session = await login(daemon)
    status, body, _ = await call(daemon, "GET", "/companion/v1/status", session=session)
    assert status == 200 and body["version"]
    status, body, _ = await call(daemon, "GET", "/v1/models", session=session)
    assert status == 401
    assert_error(body, "missing_token")
    status, body, _ = await call(daemon, "POST", "/v1/chat/completions", session=session,
                                 headers=browser_post(daemon), json={"model": "echo", "messages": []})
    assert status == 401
    status, body, _ = await call(daemon, "GET", "/companion/v1/status", session="forged-session")
    assert status == 401
    assert_error(body, "invalid_session")


async def test_changes_through_the_cookie_need_same_origin_and_the_custom_header(daemon: Daemon) -> None:
    session = await login(daemon)
    path = "/companion/v1/approvals/apr_none"
    decision = {"decision": "deny"}
    # No custom header (what an HTML form sends, even from the same origin).
    status, body, _ = await call(daemon, "POST", path, session=session, json=decision,
                                 headers={"Origin": daemon.url})
    assert status == 403
    assert_error(body, "csrf_refused")
    # No Origin at all.
    status, body, _ = await call(daemon, "POST", path, session=session, json=decision, headers={CSRF_HEADER: "1"})
    assert status == 403
    assert_error(body, "csrf_refused")
    # Another loopback port is another origin.
    status, body, _ = await call(daemon, "POST", path, session=session, json=decision,
                                 headers={"Origin": "http://127.0.0.1:1", CSRF_HEADER: "1"})
    assert status == 403
    assert_error(body, "origin_not_allowed")
    # A request the browser marks as coming from another site (another port is "same-site").
    for site in ("same-site", "cross-site"):
        status, body, _ = await call(daemon, "GET", "/companion/v1/status", session=session,
                                     headers={"Sec-Fetch-Site": site})
        assert status == 403
        assert_error(body, "cross_site_refused")
    # The dashboard's own request gets through to the handler (no such approval: 404 in our shape).
    status, body, _ = await call(daemon, "POST", path, session=session, json=decision, headers=browser_post(daemon))
    assert status == 404
    assert_error(body, "approval_not_found")


async def test_logout_ends_the_session(daemon: Daemon) -> None:
    session = await login(daemon)
    status, _, _ = await call(daemon, "POST", "/dashboard/logout", session=session, headers={"Origin": daemon.url})
    assert status == 403  # a logout is a change too: the custom header is needed
    status, _, response = await call(daemon, "POST", "/dashboard/logout", session=session,
                                     headers=browser_post(daemon))
    assert status == 204
    assert f"{COOKIE_NAME}=" in response.headers["Set-Cookie"]
    status, _, _ = await call(daemon, "GET", "/companion/v1/status", session=session)
    assert status == 401


async def test_pages_carry_a_strict_csp_and_stay_small(daemon: Daemon) -> None:
    total = 0
    for path in ("/dashboard/", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/login?code=x",
                 "/dashboard/session"):
        status, body, response = await call(daemon, "GET", path)
        assert status in (200, 403), path
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        if status == 200:
            total += len(body)
    assert total < 150 * 1024
    index = STATIC["index.html"][0].decode()
    assert "<script>" not in index and " style=" not in index and "http" not in index.replace("http-equiv", "")
    status, _, response = await call(daemon, "GET", "/dashboard")
    assert status == 302 and response.headers["Location"] == "/dashboard/"
    status, body, _ = await call(daemon, "GET", "/dashboard/secrets.json")
    assert status == 404
    assert_error(body, "not_found")
    etag = STATIC["app.js"][1]
    status, _, _ = await call(daemon, "GET", "/dashboard/app.js", headers={"If-None-Match": etag})
    assert status == 304


async def test_bad_input_gets_our_error_shape(daemon: Daemon) -> None:
    session = await login(daemon)
    cases = [
        ("GET", "/companion/v1/history?limit=abc", None, 400, "invalid_query"),
        ("GET", "/companion/v1/history?limit=0", None, 400, "invalid_query"),
        ("GET", "/companion/v1/history?status=teapot", None, 400, "invalid_query"),
        ("GET", "/companion/v1/audit?limit=99999", None, 400, "invalid_query"),
        ("GET", "/companion/v1/dashboard/overview?workspace=nope", None, 404, "workspace_not_found"),
        ("POST", "/companion/v1/dashboard/token", {"workspace": "nope"}, 404, "workspace_not_found"),
        ("POST", "/companion/v1/dashboard/token", {"workspace": 3}, 400, "invalid_body"),
        ("POST", "/companion/v1/workspaces/default/key", {"api_key": "not-a-key"}, 400, "invalid_body"),
        ("POST", "/companion/v1/workspaces/default/key", {"api_key": "sk_x", "more": 1}, 400, "invalid_body"),
        ("POST", "/companion/v1/workspaces/nope/key", {"api_key": "sk_abcdefgh"}, 404, "workspace_not_found"),
    ]
    for method, path, body, expected, code in cases:
        status, answer, _ = await call(daemon, method, path, session=session, json=body,
                                       headers=browser_post(daemon) if method == "POST" else None)
        assert status == expected, (path, answer)
        assert_error(answer, code)
    status, answer, _ = await call(daemon, "POST", "/companion/v1/workspaces/default/key", session=session,
                                   headers={**browser_post(daemon), "Content-Type": "application/json"})
    assert status == 400
    assert_error(answer, "invalid_body")


async def test_key_is_write_only_and_tokens_come_only_on_request(daemon: Daemon) -> None:
    session = await login(daemon)
    status, overview, _ = await call(daemon, "GET", "/companion/v1/dashboard/overview", session=session)
    assert status == 200
    text = orjson.dumps(overview).decode()
    assert WORKSPACE_KEY not in text and daemon.token not in text and daemon.control_token not in text
    default = next(ws for ws in overview["workspaces"] if ws["name"] == "default")
    assert default["has_key"] is True and default["key_source"] == "secrets"

    new_key = "sk_test_replaced_abcdefghijklmnop"
    status, answer, _ = await call(daemon, "POST", "/companion/v1/workspaces/default/key", session=session,
                                   headers=browser_post(daemon), json={"api_key": new_key})
    assert status == 200
    assert answer == {"workspace": "default", "has_key": True, "key_source": "secrets"}
    assert daemon.runtime.config.workspaces["default"].api_key == new_key

    status, answer, _ = await call(daemon, "GET", "/companion/v1/dashboard/token", session=session)
    assert status == 405  # never on a GET
    status, answer, _ = await call(daemon, "POST", "/companion/v1/dashboard/token", session=session,
                                   headers=browser_post(daemon), json={"workspace": "default"})
    assert status == 200 and answer == {"workspace": "default", "token": daemon.token}


async def test_overview_reports_backends_models_and_workspaces(daemon: Daemon) -> None:
    session = await login(daemon)
    status, overview, _ = await call(daemon, "GET", "/companion/v1/dashboard/overview", session=session)
    assert status == 200
    backends = {b["name"]: b for b in overview["backends"]}
    assert backends["llmtune"]["reachable"] is True and backends["llmtune"]["latency_ms"] >= 0
    assert backends["echo"]["reachable"] is True
    sources = {m["id"]: m["backend"] for m in overview["models"]}
    assert sources[MODEL] == "llmtune" and sources["echo"] == "echo"
    assert overview["config"]["valid"] is True
    assert [ws["tools"] for ws in overview["workspaces"]] == ["passthrough"]


async def test_history_records_requests_with_tokens_and_survives_a_restart(
    daemon: Daemon, start_daemon: StartDaemon, standin: StandIn
) -> None:
    client = daemon.openai()
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "secret plan"}])
    stream = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    async for _ in stream:
        pass
    session = await login(daemon)
    status, body, _ = await call(daemon, "GET", "/companion/v1/history", session=session)
    assert status == 200
    rows = body["requests"]
    assert [r["model"] for r in rows] == ["echo", MODEL]  # newest first
    hosted = rows[1]
    assert hosted["backend"] == "llmtune" and hosted["status"] == 200 and hosted["workspace"] == "default"
    assert reply.usage is not None
    assert (hosted["prompt_tokens"], hosted["completion_tokens"]) == (reply.usage.prompt_tokens,
                                                                      reply.usage.completion_tokens)
    assert rows[0]["prompt_tokens"] is not None  # the stream's usage, from its last event
    assert all(r["content"] is None for r in rows)  # no prompt kept unless store_content
    status, filtered, _ = await call(daemon, "GET", "/companion/v1/history?backend=echo", session=session)
    assert [r["model"] for r in filtered["requests"]] == ["echo"]
    status, stats, _ = await call(daemon, "GET", "/companion/v1/history/stats", session=session)
    assert sum(stats["requests_per_minute"]["llmtune"]) == 1
    assert stats["tokens_per_day"][-1]["prompt"] >= hosted["prompt_tokens"]

    await daemon.server.close()  # the store is written on the way down
    store = daemon.paths.root / "history.sqlite3"
    assert store.stat().st_mode & 0o777 == 0o600
    assert b"secret plan" not in store.read_bytes()
    again = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    assert [r["model"] for r in again.runtime.history.recent()] == ["echo", MODEL]


async def test_store_content_keeps_the_prompt(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(config="[history]\nstore_content = true\n")
    await daemon.openai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "keep me"}])
    assert daemon.runtime.history.recent()[0]["content"] == "keep me"


async def test_history_settings_are_validated(start_daemon: StartDaemon) -> None:
    from llmtune_companion.config.settings import ConfigError

    with pytest.raises(ConfigError, match=r"history\.store_content"):
        await start_daemon(config='[history]\nstore_content = "yes"\n')
    with pytest.raises(ConfigError, match=r"history\.ring_size"):
        await start_daemon(config="[history]\nring_size = 1\n")


async def test_the_cli_prints_a_working_link(daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from llmtune_companion.cli import main
    from llmtune_companion.config.paths import write_private

    # What `serve` writes: where the daemon of this settings directory listens (here, this process).
    write_private(daemon.paths.daemon_file, orjson.dumps({"pid": os.getpid(), "url": daemon.url}))
    code = await asyncio.to_thread(main, ["dashboard", "--print-url"])
    assert code == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith(daemon.url + "/dashboard/login?code=")
    status, _, response = await call(daemon, "GET", url.removeprefix(daemon.url))
    assert status == 303 and COOKIE_NAME in response.headers["Set-Cookie"]
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert await asyncio.to_thread(main, ["dashboard"]) == 0
    assert opened and opened[0].startswith(daemon.url + "/dashboard/login?code=")


async def test_history_in_memory_only_and_retention(start_daemon: StartDaemon) -> None:
    from llmtune_companion.config.settings import ConfigError

    daemon = await start_daemon(config="[history]\npersist = false\nring_size = 10\nretention_days = 30\n")
    for _ in range(12):
        await daemon.openai().chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert len(daemon.runtime.history.recent()) == 10  # the ring is bounded
    await daemon.server.close()
    assert not (daemon.paths.root / "history.sqlite3").exists()
    with pytest.raises(ConfigError, match=r"history\.retention_days"):
        await start_daemon(config="[history]\nretention_days = 0\n")
