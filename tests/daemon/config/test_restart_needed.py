"""Settings read only at start (the port ...) are not silently ignored by a reload: status says so."""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest

from tests.conftest import StartDaemon


async def test_a_port_change_while_running_asks_for_a_restart(
    start_daemon: StartDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await start_daemon(config="[server]\nport = 8742\n")
    daemon.paths.config_file.write_text("[server]\nport = 9911\n[cache]\nmodels_ttl = 5\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="llmtune_companion"):
        assert daemon.runtime.reload() is True
    assert daemon.runtime.config.settings.cache.models_ttl == 5  # the rest applies at once
    assert daemon.runtime.restart_needed == ["server.port: 8742 -> 9911"]
    assert any("server.port: 8742 -> 9911" in record.getMessage() and "llmtune-companion restart"
               in record.getMessage() for record in caplog.records)
    async with aiohttp.ClientSession() as http, http.get(
        daemon.url + "/companion/v1/status", headers=daemon.auth(daemon.control_token)
    ) as response:
        report = orjson.loads(await response.read())
    assert report["config"]["restart_needed"] == ["server.port: 8742 -> 9911"]
    # Edited back: nothing to restart for.
    daemon.paths.config_file.write_text("[server]\nport = 8742\n", encoding="utf-8")
    assert daemon.runtime.reload() is True and daemon.runtime.restart_needed == []
