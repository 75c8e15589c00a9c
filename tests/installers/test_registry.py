"""The Windows flow through an injected registry object: Run values written, the daemon started
with the launcher module (as pythonw would run it), and uninstall deleting exactly those values."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import orjson
from llmtune_companion.config.paths import HOME_ENV, Paths
from llmtune_companion.installers import service, windows

from tests.conftest import closed_port
from tests.installers.test_plans import FakeRegistry, windows_split


def test_windows_install_status_uninstall_with_an_injected_registry(tmp_path: Path) -> None:
    settings = tmp_path / "settings dir"
    settings.mkdir()
    port = closed_port()
    (settings / "config.toml").write_text(f"[server]\nport = {port}\n")
    paths = Paths(settings)
    ctx = service.make_context("windows", paths, probe=False, environ={HOME_ENV: str(settings),
                                                                      "HOME": str(tmp_path)})
    # This interpreter stands in for pythonw.exe: the Run value's words are what it runs.
    ctx = dataclasses.replace(ctx, pythonw=sys.executable)
    registry = FakeRegistry()
    registry.set(windows.RUN_KEY, "Someone else's program", "C:\\other.exe")
    try:
        report = service.install(service.make_plan(ctx), paths, registry)
        assert f"set HKEY_CURRENT_USER\\{windows.RUN_KEY}\\LLMTune Companion" in report.lines
        value = registry.get(windows.RUN_KEY, windows.DAEMON_VALUE)
        assert value is not None and windows_split(value)[-4:] == ["llmtune_companion.installers.launch", "--home",
                                                                  str(settings), "serve"]
        # /healthz answers, on the port of this settings directory: the launcher passed it on.
        assert service.wait_healthy(paths, 30) == f"http://127.0.0.1:{port}"
        status = service.status(ctx, paths, registry)
        assert status["installed"] and status["enabled"] and status["running"] and status["manager"] == "registry"
        assert status["files"] == [f"HKEY_CURRENT_USER\\{windows.RUN_KEY}\\{name}"
                                   for name in (windows.DAEMON_VALUE, windows.TRAY_VALUE)]

        again = service.install(service.make_plan(ctx), paths, registry)  # idempotent: no second daemon
        assert not any(line.startswith("started") for line in again.lines)

        removed = service.uninstall(ctx, paths, registry)
        assert "stopped the daemon" in removed.lines
        assert registry.values == {(windows.RUN_KEY, "Someone else's program"): "C:\\other.exe"}
        assert service.healthy_url(paths) is None
        assert service.status(ctx, paths, registry)["installed"] is False
    finally:
        if (settings / "daemon.json").exists():
            os.kill(orjson.loads((settings / "daemon.json").read_bytes())["pid"], signal.SIGKILL)
