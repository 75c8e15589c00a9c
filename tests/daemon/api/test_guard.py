"""security.py through the real daemon: Host allow-list, foreign Origins, local and control tokens, no leaks."""

from __future__ import annotations

import logging
import stat
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion import logs
from llmtune_companion.api.control import load_control_token
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon
from tests.daemon.test_logs import (
    assert_same_secret,
    assert_secret_free,
    restore_logging,  # noqa: F401 (fixture)
)

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


def error_code(body: bytes) -> str:
    error = orjson.loads(body)["error"]
    assert {"message", "type", "code"} <= set(error)
    code: str = error["code"]
    return code


def port_of(daemon: Daemon) -> int:
    port = daemon.server.port
    assert port is not None
    return port


# -- Host ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.com", "evil.com:{port}", "attacker.example:{port}", "127.0.0.1.nip.io:{port}", "localhost.evil.com",
     "192.168.1.20:{port}", "0.0.0.0:{port}"],
)
async def test_foreign_host_is_refused(start_daemon: StartDaemon, http: aiohttp.ClientSession, host: str) -> None:
    daemon = await start_daemon(key=None)
    header = host.format(port=port_of(daemon))
    for path in ("/v1/models", "/healthz", "/companion/v1/status"):
        status, _, body = await fetch(http, "GET", daemon.url + path,
                                      headers={"Host": header, **daemon.auth(daemon.control_token
                                                                              if "companion" in path else None)})
        assert status == 403, (path, header)
        assert error_code(body) == "host_not_allowed"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost", "LocalHost:{port}",
                                  "[::1]:{port}", "[::1]", "127.0.0.1"])
async def test_loopback_names_are_allowed(start_daemon: StartDaemon, http: aiohttp.ClientSession, host: str) -> None:
    daemon = await start_daemon(key=None)
    header = host.format(port=port_of(daemon))
    status, _, body = await fetch(http, "GET", daemon.url + "/v1/models", headers={"Host": header, **daemon.auth()})
    assert status == 200, body
    assert "echo" in [m["id"] for m in orjson.loads(body)["data"]]


async def test_allowed_hosts_extends_the_list(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(key=None, config='[server]\nallowed_hosts = ["MyBox.test", "lan.test:8742"]\n')
    port = port_of(daemon)
    for header in ("mybox.test", f"mybox.test:{port}", f"MYBOX.TEST:{port}", f"localhost:{port}", "lan.test:8742",
                   f"lan.test:{port}"):
        status, _, _ = await fetch(http, "GET", daemon.url + "/v1/models", headers={"Host": header, **daemon.auth()})
        assert status == 200, header
    status, _, body = await fetch(http, "GET", daemon.url + "/v1/models",
                                  headers={"Host": f"other.test:{port}", **daemon.auth()})
    assert status == 403 and error_code(body) == "host_not_allowed"


# -- Origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.com", "http://evil.com", "null", "http://127.0.0.1:1",
                                    "http://localhost:{port}", "https://127.0.0.1:{port}"])
async def test_foreign_origin_is_refused(start_daemon: StartDaemon, http: aiohttp.ClientSession, origin: str) -> None:
    daemon = await start_daemon(key=None)
    value = origin.format(port=port_of(daemon))
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/healthz"),
                         ("OPTIONS", "/v1/chat/completions"), ("OPTIONS", "/v1/models")):
        headers = {"Origin": value, **daemon.auth()}
        if method == "OPTIONS":  # a CORS preflight carries no credentials
            headers = {"Origin": value, "Access-Control-Request-Method": "POST",
                       "Access-Control-Request-Headers": "authorization,content-type"}
        body_json = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None
        status, headers_out, body = await fetch(http, method, daemon.url + path, headers=headers, json=body_json)
        assert status == 403, (method, path, value)
        assert error_code(body) == "origin_not_allowed"
        assert not any(name.lower().startswith("access-control-allow") for name in headers_out)


async def test_same_origin_is_allowed(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(key=None)
    origin = daemon.url  # http://127.0.0.1:PORT, the Host the request carries
    status, _, body = await fetch(http, "POST", daemon.url + "/v1/chat/completions",
                                  headers={"Origin": origin, **daemon.auth()},
                                  json={"model": "echo", "messages": [{"role": "user", "content": "same origin"}]})
    assert status == 200, body
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "same origin"


async def test_allowed_origins_extends_the_list(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(key=None, config='[server]\nallowed_origins = ["http://localhost:5173"]\n')
    status, _, _ = await fetch(http, "GET", daemon.url + "/v1/models",
                               headers={"Origin": "http://localhost:5173", **daemon.auth()})
    assert status == 200
    status, _, body = await fetch(http, "GET", daemon.url + "/v1/models",
                                  headers={"Origin": "http://localhost:5174", **daemon.auth()})
    assert status == 403 and error_code(body) == "origin_not_allowed"


async def test_allowed_origin_gets_cors_headers_and_preflight(start_daemon: StartDaemon) -> None:
    """An origin the user allowed can really be used from a browser: preflight, then the call, streamed too."""
    origin = "http://localhost:5173"
    daemon = await start_daemon(key=None, config=f'[server]\nallowed_origins = ["{origin}"]\n')
    async with aiohttp.ClientSession() as session:
        preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}
        async with session.options(daemon.base_url + "/chat/completions", headers=preflight) as response:
            assert response.status == 204  # no token needed to ask
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi there"}]}
        async with session.post(daemon.base_url + "/chat/completions", json=body,
                                headers={"Origin": origin, **daemon.auth()}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert "X-Companion-Backend" in response.headers["Access-Control-Expose-Headers"]
            assert b"[DONE]" in await response.read()
        # Without a token the call itself is still refused, CORS or not.
        async with session.get(daemon.base_url + "/models", headers={"Origin": origin}) as response:
            assert response.status == 401
        # A foreign origin's preflight is refused, and nobody else gets CORS headers.
        async with session.options(daemon.base_url + "/chat/completions",
                                   headers={**preflight, "Origin": "http://evil.example"}) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
        async with session.get(daemon.base_url + "/models", headers=daemon.auth()) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


# -- tokens --------------------------------------------------------------------------------------


async def test_missing_and_wrong_tokens_are_refused(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(key=None)
    url = daemon.url + "/v1/models"
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "missing_token"),
        ({"Authorization": "Bearer"}, "missing_token"),
        ({"Authorization": "Bearer   "}, "missing_token"),
        ({"Authorization": f"Basic {daemon.token}"}, "missing_token"),
        ({"Authorization": "Bearer lct_wrong_wrong_wrong_wrong_wrong_wrong_wrong"}, "invalid_token"),
        ({"Authorization": f"Bearer {daemon.token[:-1]}"}, "invalid_token"),
        ({"Authorization": f"Bearer {daemon.token}x"}, "invalid_token"),
        ({"Authorization": f"Bearer {WORKSPACE_KEY}"}, "invalid_token"),  # the LLMTune key is not a local token
        ({"x-api-key": "lct_nope"}, "invalid_token"),
    ]
    for headers, code in cases:
        status, out_headers, body = await fetch(http, "GET", url, headers=headers)
        assert status == 401, headers.keys()
        assert error_code(body) == code
        assert orjson.loads(body)["error"]["type"] == "authentication_error"
        assert_secret_free(body, str(out_headers), secrets=[daemon.token, WORKSPACE_KEY])
    # The same holds for every endpoint, not only the model list.
    status, _, body = await fetch(http, "POST", daemon.url + "/v1/chat/completions",
                                  json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
    assert status == 401 and error_code(body) == "missing_token"


async def test_accepted_token_forms(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(key=None)
    for headers in ({"Authorization": f"Bearer {daemon.token}"}, {"Authorization": f"bearer {daemon.token}"},
                    {"x-api-key": daemon.token}, {"X-Api-Key": daemon.token}):
        status, _, _ = await fetch(http, "GET", daemon.url + "/v1/models", headers=headers)
        assert status == 200, headers.keys()


async def test_each_workspace_token_selects_its_workspace(start_daemon: StartDaemon,
                                                          http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(key=None)
    add_workspace(daemon.paths, "team", None)
    # Not live without the watcher: the running daemon knows only the tokens it loaded.
    team_token = load_config(daemon.paths).workspaces["team"].token
    status, _, _ = await fetch(http, "GET", daemon.url + "/v1/models", headers=daemon.auth(team_token))
    assert status == 401
    assert daemon.runtime.reload()
    status, _, _ = await fetch(http, "GET", daemon.url + "/v1/models", headers=daemon.auth(team_token))
    assert status == 200
    team, default = daemon.runtime.authenticate(team_token), daemon.runtime.authenticate(daemon.token)
    assert team is not None and team.name == "team"
    assert default is not None and default.name == "default"


# -- control API ---------------------------------------------------------------------------------


async def test_control_api_needs_the_control_token(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon()
    status_url = daemon.url + "/companion/v1/status"
    status, _, body = await fetch(http, "GET", status_url, headers=daemon.auth(daemon.control_token))
    assert status == 200
    assert orjson.loads(body)["workspaces"][0]["name"] == "default"
    status, _, _ = await fetch(http, "GET", status_url, headers={"x-api-key": daemon.control_token})
    assert status == 200
    for headers, code in (({}, "missing_token"), (daemon.auth(daemon.token), "invalid_token"),
                          (daemon.auth("ctl_" + "x" * 43), "invalid_token")):
        status, _, body = await fetch(http, "GET", status_url, headers=headers)
        assert status == 401 and error_code(body) == code
    status, _, _ = await fetch(http, "POST", daemon.url + "/companion/v1/reload", headers=daemon.auth(daemon.token))
    assert status == 401
    status, _, body = await fetch(http, "POST", daemon.url + "/companion/v1/reload",
                                  headers=daemon.auth(daemon.control_token))
    assert status == 200 and orjson.loads(body)["reloaded"] is True
    # ... and the control token is not a workspace token.
    status, _, body = await fetch(http, "GET", daemon.url + "/v1/models", headers=daemon.auth(daemon.control_token))
    assert status == 401 and error_code(body) == "invalid_token"


async def test_control_token_file(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(key=None)
    path = daemon.paths.control_token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    prefix, length = daemon.control_token[:4], len(daemon.control_token)
    assert prefix == "ctl_" and length >= 40
    assert_same_secret(path.read_text().strip(), daemon.control_token, "control token file")
    assert_same_secret(load_control_token(daemon.paths), daemon.control_token, "control token reloaded")
    reused = daemon.control_token in {ws.token for ws in daemon.runtime.config.workspaces.values()}
    assert not reused
    path.write_text("ctl_short")  # a damaged file is replaced by a new strong token
    fresh = load_control_token(daemon.paths)
    assert fresh != "ctl_short" and len(fresh) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_healthz_is_open_and_secret_free(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon()
    status, headers, body = await fetch(http, "GET", daemon.url + "/healthz")
    assert status == 200
    assert orjson.loads(body) == {"status": "ok"}
    assert_secret_free(body, str(headers), secrets=[WORKSPACE_KEY, daemon.token, daemon.control_token])
    # Open means no token, not no Host check.
    status, _, _ = await fetch(http, "GET", daemon.url + "/healthz", headers={"Host": "evil.com"})
    assert status == 403


# -- the workspace key never leaks ---------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
async def test_workspace_key_never_leaks(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url},
                                config="[upstream]\nmax_retries = 0\n[hosted]\nfallback = \"echo\"\n")
    logs.configure(daemon.paths, "DEBUG", to_stderr=False)
    add_workspace(daemon.paths, "nokey", None)
    daemon.runtime.reload()
    nokey_token = daemon.runtime.config.workspaces["nokey"].token
    api = standin.api
    chat = {"model": HOSTED, "messages": [{"role": "user", "content": "hello"}]}
    seen: list[str] = []

    async def record(method: str, path: str, **kwargs: Any) -> int:
        status, headers, body = await fetch(http, method, daemon.url + path, **kwargs)
        seen.append(f"{status} {headers} {body.decode(errors='replace')}")
        return status

    assert await record("GET", "/v1/models", headers=daemon.auth()) == 200
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(), json=chat) == 200
    # The upstream quotes the key in an error (non-streamed and streamed), with and without fallback.
    quoting = {"error": {"message": f"key {WORKSPACE_KEY} is over quota", "code": "INSUFFICIENT_CREDITS"}}
    api.fail_next(429, body=quoting, times=2, path_prefix="/v1/chat")
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(), json=chat) == 429
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(), json={**chat, "stream": True}) == 429
    api.fail_next(500, body=quoting, path_prefix="/v1/chat")
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(), json=chat) == 200  # fell back
    # The upstream refuses the key (rotated upstream).
    api.api_key = "sk_rotated_elsewhere_000000"
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(), json=chat) == 401
    assert await record("GET", "/v1/models", headers={"Cache-Control": "no-cache", **daemon.auth()}) == 200
    api.api_key = WORKSPACE_KEY
    # Our own errors.
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(), data=b"{bad") == 400
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(),
                        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}) == 404
    # A workspace without a key is told so; nothing is sent upstream for it.
    before = len(api.requests)
    assert await record("POST", "/v1/chat/completions", headers=daemon.auth(nokey_token), json=chat) == 401
    assert len(api.requests) == before
    assert await record("GET", "/v1/models/not-a-model", headers=daemon.auth()) == 404
    assert await record("GET", "/v1/models", headers=daemon.auth("lct_" + "x" * 43)) == 401
    assert await record("GET", "/companion/v1/status", headers=daemon.auth(daemon.control_token)) == 200
    assert await record("GET", "/healthz") == 200

    assert any("[redacted]" in line for line in seen), "the quoted key was not scrubbed"
    assert_secret_free(*seen, secrets=[WORKSPACE_KEY, daemon.token, nokey_token, daemon.control_token])
    status_text = orjson.dumps(daemon.runtime.status()).decode()
    assert_secret_free(status_text, secrets=[WORKSPACE_KEY, daemon.token, nokey_token, daemon.control_token])
    assert any(ws["has_key"] and ws["key_source"] == "secrets" for ws in daemon.runtime.status()["workspaces"])

    daemon.runtime.request_log.flush()  # request lines are written in batches
    for handler in logging.getLogger("llmtune_companion").handlers:
        handler.flush()
    log_files = list(daemon.paths.log_dir.glob("*"))
    assert log_files
    log_text = "".join(path.read_text(encoding="utf-8") for path in log_files)
    assert "/v1/chat/completions" in log_text  # the run was logged ...
    assert "falling back" in log_text  # ... including its errors
    assert_secret_free(log_text, secrets=[WORKSPACE_KEY, daemon.token, nokey_token, daemon.control_token])
