"""`service install` under a real systemd user manager: started, restarted after a crash, stopped on uninstall."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import closed_port
from tests.support.systemd_user import user_manager

UNIT = "llmtune-companion.service"


@pytest.fixture
def manager() -> Iterator[dict[str, str]]:
    with user_manager() as env:
        yield env


def companion(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtune_companion", *args], env=env, capture_output=True,
                          text=True, timeout=90, check=False)


def systemctl(env: dict[str, str], *args: str) -> str:
    return subprocess.run(["systemctl", "--user", *args], env=env, capture_output=True, text=True, timeout=30,
                          check=False).stdout.strip()


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def main_pid(env: dict[str, str]) -> int:
    return int(systemctl(env, "show", "--property=MainPID", "--value", UNIT) or 0)


def test_systemd_starts_restarts_and_stops_the_daemon(manager: dict[str, str], tmp_path: Path) -> None:
    settings = tmp_path / "companion home"  # a space: the unit must quote it
    settings.mkdir()
    port = closed_port()
    (settings / "config.toml").write_text(f"[server]\nport = {port}\n")
    env = {**manager, "LLMTUNE_COMPANION_HOME": str(settings)}
    unit = Path(env["HOME"]) / ".config/systemd/user" / UNIT

    installed = companion(env, "service", "install", "--no-tray")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"wrote {unit}" in installed.stdout
    assert f"runs at http://127.0.0.1:{port}/v1" in installed.stdout
    assert healthz(port)
    assert systemctl(env, "is-enabled", UNIT) == "enabled" and systemctl(env, "is-active", UNIT) == "active"
    # systemd read the settings directory and the absolute command back as written.
    assert f"LLMTUNE_COMPANION_HOME={settings}" in systemctl(env, "show", "--property=Environment", UNIT)
    exec_start = systemctl(env, "show", "--property=ExecStart", UNIT)
    assert f"path={Path(sys.executable).parent / 'llmtune-companion'} ;" in exec_start and "serve" in exec_start
    status = orjson.loads(companion(env, "service", "status", "--json").stdout)
    assert status == {"installed": True, "enabled": True, "running": True, "files": [str(unit)],
                      "platform": "linux", "manager": "systemd"}

    # A crash: systemd starts it again.
    first = main_pid(env)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: main_pid(env) not in (0, first) and healthz(port), "systemd restarted the daemon")
    assert systemctl(env, "show", "--property=NRestarts", "--value", UNIT) == "1"

    # Installing again changes nothing and leaves the running daemon alone.
    second = main_pid(env)
    again = companion(env, "service", "install", "--no-tray")
    assert again.returncode == 0 and f"unchanged {unit}" in again.stdout, again.stderr
    assert main_pid(env) == second

    removed = companion(env, "service", "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert f"removed {unit}" in removed.stdout
    assert systemctl(env, "is-active", UNIT) == "inactive"
    assert not healthz(port)
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
    assert not unit.exists() and not (unit.parent / "default.target.wants" / UNIT).exists()
    assert not (settings / "service.json").exists()
    after = companion(env, "service", "status", "--json")
    assert after.returncode == 3
    assert orjson.loads(after.stdout) == {"installed": False, "enabled": False, "running": False, "files": [],
                                          "platform": "linux", "manager": None}
