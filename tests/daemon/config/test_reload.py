"""reload.py: edits to config.toml and secrets.json apply live; an invalid edit keeps the last good settings."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from llmtune_companion import logs
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace, remove_workspace

from tests.conftest import WORKSPACE_KEY, Daemon, StartDaemon
from tests.daemon.test_logs import (
    assert_secret_free,
    restore_logging,  # noqa: F401 (fixture)
)

RELOAD_WAIT = 5.0  # the watcher debounces 150 ms; a couple of seconds is plenty


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = RELOAD_WAIT) -> float:
    """Poll until `check` holds; returns how long it took."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"not applied within {timeout}s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def status_of(http: aiohttp.ClientSession, daemon: Daemon, path: str, **headers: str) -> int:
    async with http.get(daemon.url + path, headers=headers) as response:
        await response.read()
        return response.status


async def chat(http: aiohttp.ClientSession, daemon: Daemon, model: str) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with http.post(daemon.url + "/v1/chat/completions", json=body, headers=daemon.auth()) as response:
        await response.read()
        return response.status, response.headers.get("X-Companion-Backend", "")


async def control_status(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(daemon.url + "/companion/v1/status", headers=daemon.auth(daemon.control_token)) as response:
        assert response.status == 200
        status: dict[str, Any] = await response.json()
        return status


def edit_config(daemon: Daemon, text: str) -> None:
    daemon.paths.config_file.write_text(text, encoding="utf-8")


async def test_config_edits_apply_without_restart(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(watch=True, key=None, config="[server]\nlog_requests = false\n")
    runtime = daemon.runtime
    assert "lab" not in runtime.backends
    assert await status_of(http, daemon, "/v1/models", Host="mybox.test", **daemon.auth()) == 403

    edit_config(daemon, """
[server]
log_requests = false
allowed_hosts = ["mybox.test"]

# a second echo backend, and a route that sends "alias" to it
[backends.lab]
type = "echo"

[[routes]]
match = "alias*"
backend = "lab"
model = "echo"
""")

    async def applied() -> bool:
        return "lab" in daemon.runtime.backends

    took = await eventually(applied, "new backend")
    assert took < 3.0
    assert daemon.runtime.config.settings.server.allowed_hosts == ("mybox.test",)
    assert await status_of(http, daemon, "/v1/models", Host="mybox.test", **daemon.auth()) == 200
    assert await chat(http, daemon, "alias-1") == (200, "lab")
    async with http.get(daemon.url + "/v1/models", headers=daemon.auth()) as response:
        ids = [m["id"] for m in (await response.json())["data"]]
    assert "lab/echo" in ids
    assert daemon.runtime.reloads >= 1
    assert daemon.runtime.config_error is None

    # Taking it away again is just as live.
    edit_config(daemon, "[server]\nlog_requests = false\n")

    async def removed() -> bool:
        return "lab" not in daemon.runtime.backends

    await eventually(removed, "backend removed")
    assert await status_of(http, daemon, "/v1/models", Host="mybox.test", **daemon.auth()) == 403
    assert daemon.runtime.router.resolve("alias-1").backend == "llmtune"


async def test_a_changed_backend_lists_its_new_models_live(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    backend = '[backends.lab]\nurl = "http://127.0.0.1:9/v1"\nmodels = [{models}]\n'
    daemon = await start_daemon(watch=True, key=None, config=backend.format(models='"small"'))

    async def listed() -> list[str]:
        async with http.get(daemon.url + "/v1/models", headers=daemon.auth()) as response:
            return [m["id"] for m in (await response.json())["data"]]

    assert "lab/small" in await listed()
    edit_config(daemon, backend.format(models='"small-v2", "large"'))

    async def applied() -> bool:
        return "lab/large" in await listed()

    await eventually(applied, "the backend's new model list")
    assert "lab/small" not in await listed()


async def test_a_new_workspace_token_is_valid_live(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(watch=True, key=None)
    add_workspace(daemon.paths, "team", "sk_team_key_000000000000")
    token = load_config(daemon.paths).workspaces["team"].token

    async def accepted() -> bool:
        return await status_of(http, daemon, "/v1/models", **daemon.auth(token)) == 200

    await eventually(accepted, "workspace added with workspaces.add_workspace")
    found = daemon.runtime.authenticate(token)
    assert found is not None and found.name == "team" and found.has_key
    # Removing it revokes the token just as live.
    remove_workspace(daemon.paths, "team")

    async def refused() -> bool:
        return await status_of(http, daemon, "/v1/models", **daemon.auth(token)) == 401

    await eventually(refused, "workspace removed")
    assert await status_of(http, daemon, "/v1/models", **daemon.auth()) == 200  # the others keep working


async def test_workspace_added_from_the_cli_is_valid_live(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(watch=True, key=None)
    env = {**os.environ, "LLMTUNE_COMPANION_HOME": str(daemon.paths.root)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmtune_companion", "workspace", "add", "cli-team", "--key-stdin",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(f"{WORKSPACE_KEY}\n".encode()), 30)
    assert process.returncode == 0, err.decode()
    assert_secret_free(out, err, secrets=[WORKSPACE_KEY])
    token = load_config(daemon.paths).workspaces["cli-team"].token

    async def accepted() -> bool:
        return await status_of(http, daemon, "/v1/models", **daemon.auth(token)) == 200

    await eventually(accepted, "workspace added with `llmtune-companion workspace add`")


@pytest.mark.usefixtures("restore_logging")
async def test_an_invalid_edit_keeps_the_last_good_settings(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(watch=True, key=None, config="[backends.lab]\ntype = \"echo\"\n")
    logs.configure(daemon.paths, "INFO", to_stderr=False)
    good = daemon.runtime.config
    reloads = daemon.runtime.reloads

    edit_config(daemon, '[backends.lab]\ntype = "echo"\n\n[server]\nport = "not a port"\n')

    async def reported() -> bool:
        return daemon.runtime.config_error is not None

    await eventually(reported, "invalid edit reported")
    assert daemon.runtime.config is good  # nothing half-applied
    assert daemon.runtime.reloads == reloads
    # Requests still work, with the last good settings.
    assert await chat(http, daemon, "lab/echo") == (200, "lab")
    assert await status_of(http, daemon, "/v1/models", **daemon.auth()) == 200
    # The runtime and the control API both name the field.
    status = daemon.runtime.status()["config"]
    assert status["valid"] is False and "server.port" in status["error"] and "integer" in status["error"]
    remote = (await control_status(http, daemon))["config"]
    assert remote["valid"] is False and "server.port" in remote["error"]
    # ... and it is logged.
    for handler in logging.getLogger("llmtune_companion").handlers:
        handler.flush()
    log_text = daemon.paths.log_file.read_text(encoding="utf-8")
    assert "config reload failed" in log_text and "server.port" in log_text

    # A broken TOML file is reported the same way.
    edit_config(daemon, "[server\n")

    async def toml_reported() -> bool:
        return "not valid TOML" in (daemon.runtime.config_error or "")

    await eventually(toml_reported, "broken TOML reported")
    assert await chat(http, daemon, "lab/echo") == (200, "lab")

    # Fixing the file clears the error and applies the new settings.
    edit_config(daemon, '[backends.lab2]\ntype = "echo"\n')

    async def fixed() -> bool:
        return daemon.runtime.config_error is None and "lab2" in daemon.runtime.backends

    await eventually(fixed, "repaired config applied")
    assert (await control_status(http, daemon))["config"]["valid"] is True
    assert daemon.runtime.reloads > reloads
    assert "lab" not in daemon.runtime.backends


async def test_without_watch_nothing_changes_until_asked(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(watch=False, key=None)
    edit_config(daemon, '[backends.lab]\ntype = "echo"\n')
    await asyncio.sleep(0.5)
    assert "lab" not in daemon.runtime.backends
    async with http.post(daemon.url + "/companion/v1/reload", headers=daemon.auth(daemon.control_token)) as response:
        assert response.status == 200 and (await response.json())["reloaded"] is True
    assert "lab" in daemon.runtime.backends
    edit_config(daemon, "[server\n")
    async with http.post(daemon.url + "/companion/v1/reload", headers=daemon.auth(daemon.control_token)) as response:
        assert response.status == 422
        body = await response.json()
    assert body["reloaded"] is False and "not valid TOML" in body["error"]
    assert "lab" in daemon.runtime.backends
