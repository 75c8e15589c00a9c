"""POST /companion/v1/workspaces/{name}: a workspace's tool mode, written to config.toml and live at once."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import Daemon, StartDaemon
from tests.daemon.api.test_control import read_event


@pytest.fixture
async def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.fixture
async def daemon(start_daemon: StartDaemon, project: Path) -> Daemon:
    config = f'# my settings\n[workspaces.default]\nroot = "{project}"\n\n[workspaces.bare]\n'
    return await start_daemon(config=config)


@pytest.fixture
async def control(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth(daemon.control_token)) as session:
        yield session


async def test_setting_a_mode_writes_config_and_reloads(daemon: Daemon, control: aiohttp.ClientSession) -> None:
    async with control.get("/companion/v1/events") as stream:
        for mode in ("gate", "execute", "passthrough"):
            async with control.post("/companion/v1/workspaces/default", json={"tools": mode}) as response:
                assert response.status == 200, await response.text()
                body = await response.json()
            assert (body["workspace"], body["tools"]) == ("default", mode)
            assert daemon.runtime.config.workspaces["default"].settings.tools == mode  # live, no restart
            kind, event = await read_event(stream.content)
            assert (kind, event["valid"], event["error"]) == ("settings.reloaded", True, None)
    text = daemon.paths.config_file.read_text()
    assert text.startswith("# my settings\n")  # the person's comments survive
    assert tomllib.loads(text)["workspaces"]["default"]["tools"] == "passthrough"
    async with control.get("/companion/v1/status") as response:
        workspaces = {ws["name"]: ws for ws in (await response.json())["workspaces"]}
    assert workspaces["default"]["tools"] == "passthrough" and workspaces["default"]["root"]
    assert workspaces["bare"] == {"name": "bare", "has_key": False, "key_source": "none", "tools": "passthrough",
                                  "root": None}


async def test_bad_requests_get_clear_errors(daemon: Daemon, control: aiohttp.ClientSession) -> None:
    before = daemon.paths.config_file.read_text()
    cases: list[tuple[str, bytes, int, str, str]] = [
        ("default", orjson.dumps({"tools": "yolo"}), 400, "invalid_body", "'tools' must be"),
        ("default", orjson.dumps({}), 400, "invalid_body", "'tools' must be"),
        ("default", orjson.dumps({"tools": "gate", "root": "/"}), 400, "invalid_body", "unknown field(s) 'root'"),
        ("default", b"", 400, "invalid_body", "a JSON object body is required"),
        ("default", b"{nope", 400, "invalid_json", "not valid JSON"),
        ("default", b"[]", 400, "invalid_body", "must be a JSON object"),
        ("missing", orjson.dumps({"tools": "gate"}), 404, "workspace_not_found", "no workspace named 'missing'"),
        ("bare", orjson.dumps({"tools": "execute"}), 409, "invalid_settings", "needs root"),
    ]
    for name, body, status, code, message in cases:
        async with control.post(f"/companion/v1/workspaces/{name}", data=body,
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == status, (name, body)
            error = (await response.json())["error"]
        assert error["code"] == code and message in error["message"], error
        assert set(error) == {"message", "type", "code", "details"}
    assert daemon.paths.config_file.read_text() == before  # nothing refused was written
    async with aiohttp.ClientSession(daemon.url) as session:
        async with session.post("/companion/v1/workspaces/default", json={"tools": "gate"},
                                headers=daemon.auth()) as response:  # a workspace token is not enough
            assert response.status == 401


async def test_a_broken_config_is_not_edited(daemon: Daemon, control: aiohttp.ClientSession) -> None:
    daemon.paths.config_file.write_text("[workspaces.default\n")
    async with control.post("/companion/v1/workspaces/default", json={"tools": "gate"}) as response:
        assert response.status == 409
        error = (await response.json())["error"]
    assert error["code"] == "invalid_settings" and "not valid TOML" in error["message"]
    assert daemon.paths.config_file.read_text() == "[workspaces.default\n"
