"""`llmtune-companion service ...` as a person runs it, where no systemd user manager runs: XDG autostart,
the daemon started in the background, and everything undone by uninstall (the systemd path is in
tests/installers/test_systemd.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.installers.service import pid_alive

from tests.conftest import closed_port


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmtune_companion", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=90, check=False)


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def daemon_pid(settings: Path) -> int | None:
    try:
        return int(orjson.loads((settings / "daemon.json").read_bytes())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, int]]:
    """A user HOME without a systemd user manager, a settings directory on a free port."""
    home, runtime, settings = tmp_path / "home", tmp_path / "run", tmp_path / "settings"
    for folder in (home, runtime, settings):
        folder.mkdir(mode=0o700)
    port = closed_port()
    (settings / "config.toml").write_text(f"[server]\nport = {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_", "LLMTUNE_"))}
    # An empty runtime directory: `systemctl --user` finds no manager there.
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), LLMTUNE_COMPANION_HOME=str(settings))
    yield env, settings, port
    pid = daemon_pid(settings)
    if pid is not None:  # a failed test must not leave a daemon behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def secrets_of(settings: Path) -> list[str]:
    return [ws.token for ws in load_config(Paths(settings), {}).workspaces.values()]


def test_dry_run_prints_every_platform_and_changes_nothing(desktop: tuple[dict[str, str], Path, int]) -> None:
    env, settings, _port = desktop
    before = sorted(Path(env["HOME"]).rglob("*")), sorted(settings.rglob("*"))
    linux = run(env, "service", "install", "--dry-run")
    assert linux.returncode == 0, linux.stderr
    assert "## file " + str(Path(env["HOME"]) / ".config/autostart/llmtune-companion.desktop") in linux.stdout
    assert f"Exec=env LLMTUNE_COMPANION_HOME={settings} " in linux.stdout
    macos = run(env, "service", "install", "--dry-run", "--platform", "macos", "--no-tray")
    assert "<key>KeepAlive</key>" in macos.stdout and "io.llmtune.companion.tray" not in macos.stdout
    assert "launchctl bootstrap gui/" in macos.stdout
    windows = run(env, "service", "install", "--dry-run", "--platform", "windows")
    assert "CurrentVersion\\Run" in windows.stdout and "LLMTune Companion tray = " in windows.stdout
    assert (sorted(Path(env["HOME"]).rglob("*")), sorted(settings.rglob("*"))) == before
    assert not healthz(_port)

    refused = run(env, "service", "install", "--platform", "macos")
    assert refused.returncode == 2 and "add --dry-run" in refused.stderr
    bad = run(env, "service", "install", "--platform", "beos", "--dry-run")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_install_without_systemd_uses_autostart_and_uninstall_undoes_it(
        desktop: tuple[dict[str, str], Path, int]) -> None:
    env, settings, port = desktop
    entry = Path(env["HOME"]) / ".config/autostart/llmtune-companion.desktop"
    installed = run(env, "service", "install")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "no systemd user manager answers" in installed.stderr
    assert f"wrote {entry}" in installed.stdout and f"runs at http://127.0.0.1:{port}/v1" in installed.stdout
    assert entry.read_text().count("Exec=") == 1 and healthz(port)
    pid = daemon_pid(settings)
    assert pid is not None

    status = run(env, "service", "status", "--json")
    report = orjson.loads(status.stdout)
    assert status.returncode == 0 and report["installed"] and report["enabled"] and report["running"]
    assert report["manager"] == "autostart" and str(entry) in report["files"]
    text = run(env, "service", "status")
    assert "installed (autostart), enabled, running" in text.stdout and f"file:     {entry}" in text.stdout

    again = run(env, "service", "install")
    assert again.returncode == 0 and f"unchanged {entry}" in again.stdout and "started" not in again.stdout
    assert daemon_pid(settings) == pid  # no second daemon

    removed = run(env, "service", "uninstall")
    assert removed.returncode == 0 and "stopped the daemon" in removed.stdout and f"removed {entry}" in removed.stdout
    assert not entry.exists() and not healthz(port)
    assert not pid_alive(pid)  # stopped, not just told to
    after = run(env, "service", "status", "--json")
    assert after.returncode == 3 and orjson.loads(after.stdout)["installed"] is False
    assert "not installed" in run(env, "service", "status").stdout
    nothing = run(env, "service", "uninstall")
    assert nothing.returncode == 0 and "the service was not installed" in nothing.stdout

    printed = "".join(r.stdout + r.stderr for r in (installed, status, text, again, removed, after))
    assert not any(secret in printed for secret in secrets_of(settings))


def test_purge_asks_first(desktop: tuple[dict[str, str], Path, int]) -> None:
    env, settings, _port = desktop
    declined = run(env, "service", "uninstall", "--purge", stdin="n\n")
    assert declined.returncode == 1 and "nothing removed" in declined.stderr and f"Remove {settings}" in declined.stderr
    assert (settings / "config.toml").exists()
    silent = run(env, "service", "uninstall", "--purge")  # no answer at all is a no
    assert silent.returncode == 1 and settings.exists()
    accepted = run(env, "service", "uninstall", "--purge", stdin="y\n")
    assert accepted.returncode == 0 and f"removed {settings}" in accepted.stdout and not settings.exists()
    settings.mkdir()
    forced = run(env, "service", "uninstall", "--purge", "--yes")
    assert forced.returncode == 0 and not settings.exists()
