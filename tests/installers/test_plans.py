"""The rendered service definitions, checked by the tools that read them: systemd-analyze,
desktop-file-validate and GLib's launcher (gio), plistlib with launchd's keys, a registry object."""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from llmtune_companion.installers import linux, macos, windows
from llmtune_companion.installers.plan import DAEMON_LABEL, TRAY_LABEL, Context, render

from tests.support.system import require_executable

# A settings directory with every character the quoting rules of the three formats care about.
AWKWARD = "/tmp/llmtune companion/100% \"quoted\" $HOME\\dir;'x'"


def recorder(tmp_path: Path) -> Path:
    """An executable that writes the arguments and settings directory it was started with."""
    folder = tmp_path / "bin dir"
    folder.mkdir(exist_ok=True)
    script = folder / "llmtune-companion"
    script.write_text('#!/bin/sh\nout="$(dirname "$0")/argv.txt"\nprintf \'%s\\n\' "$@" > "$out.tmp"\n'
                      'printf \'home=%s\\n\' "$LLMTUNE_COMPANION_HOME" >> "$out.tmp"\nmv "$out.tmp" "$out"\n')
    script.chmod(0o755)
    return script


def context(tmp_path: Path, *, settings_dir: str | None = AWKWARD, **changes: object) -> Context:
    values: dict[str, object] = {
        "platform": "linux", "command": (str(recorder(tmp_path)),),
        "settings_dir": Path(settings_dir) if settings_dir else None,
        "log_dir": Path(settings_dir or "/tmp/s") / "logs", "home": tmp_path / "home",
        "config_home": tmp_path / "home" / ".config", "tray": True, "systemd": True, "uid": 501,
        "pythonw": r"C:\Users\a b\venv\Scripts\pythonw.exe",
    }
    values.update(changes)
    return Context(**values)  # type: ignore[arg-type]


def verify_unit(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    analyze = require_executable("systemd-analyze")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    folder = tmp_path / "units"
    folder.mkdir(exist_ok=True)
    (folder / linux.UNIT).write_text(text)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run([analyze, "--user", "verify", str(folder / linux.UNIT)], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize("settings_dir", [AWKWARD, None])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, settings_dir: str | None) -> None:
    ctx = context(tmp_path, settings_dir=settings_dir)
    text = linux.render_unit(ctx)
    result = verify_unit(tmp_path, text)
    # verify exits 0 on unknown keys and bad values: only an empty stderr means systemd took every line.
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert ("Environment=" in text) == (settings_dir is not None)
    # The check has teeth: a misspelt key is reported.
    broken = verify_unit(tmp_path, text.replace("Restart=", "Restrat="))
    assert "Unknown key" in broken.stderr


def launch_desktop(tmp_path: Path, path: Path) -> list[str]:
    """Start a .desktop file as a desktop session does (GLib parses Exec=) and read what the program got."""
    gio = require_executable("gio")
    argv_file = tmp_path / "bin dir" / "argv.txt"
    argv_file.unlink(missing_ok=True)
    subprocess.run([gio, "launch", str(path)], check=True, timeout=30, capture_output=True,
                   env={"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home")})
    deadline = time.monotonic() + 10
    while not argv_file.exists():
        assert time.monotonic() < deadline, f"{path.name} did not start its program"
        time.sleep(0.05)
    return argv_file.read_text().splitlines()


@pytest.mark.parametrize("settings_dir", [AWKWARD, None])
def test_desktop_entries_validate_and_launch_the_right_words(tmp_path: Path, settings_dir: str | None) -> None:
    validate = require_executable("desktop-file-validate")
    ctx = context(tmp_path, settings_dir=settings_dir, systemd=False)
    plan = linux.plan(ctx)
    entries = {spec.path.name: spec for spec in plan.files}
    assert set(entries) == {linux.DAEMON_DESKTOP, linux.TRAY_DESKTOP}
    for name, spec in entries.items():
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        spec.path.write_text(spec.content)
        result = subprocess.run([validate, str(spec.path)], capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
        command = "serve" if name == linux.DAEMON_DESKTOP else "tray"
        assert launch_desktop(tmp_path, spec.path) == [command, f"home={settings_dir or ''}"]
    assert spec.path.parent == ctx.config_home / "autostart"
    # Without a systemd user manager the daemon is started now, and the user is told nothing restarts it.
    assert [c.mode for c in plan.commands] == ["detach"] and "no systemd user manager" in plan.warnings[0]


def test_linux_plan_with_systemd_and_without_tray(tmp_path: Path) -> None:
    plan = linux.plan(context(tmp_path, tray=False))
    assert [spec.path for spec in plan.files] == [tmp_path / "home/.config/systemd/user/llmtune-companion.service"]
    assert [c.argv for c in plan.commands if c.mode == "always"] == [
        ("systemctl", "--user", "daemon-reload"), ("systemctl", "--user", "enable", "--now", linux.UNIT)]
    assert plan.warnings == []


@pytest.mark.parametrize("settings_dir", [AWKWARD, None])
def test_launch_agents_have_what_launchd_needs(tmp_path: Path, settings_dir: str | None) -> None:
    ctx = context(tmp_path, platform="macos", settings_dir=settings_dir)
    plan = macos.plan(ctx)
    agents = {spec.path: plistlib.loads(spec.content.encode()) for spec in plan.files}
    daemon_path = tmp_path / "home/Library/LaunchAgents/io.llmtune.companion.plist"
    tray_path = tmp_path / "home/Library/LaunchAgents/io.llmtune.companion.tray.plist"
    assert list(agents) == [daemon_path, tray_path]
    daemon, tray = agents[daemon_path], agents[tray_path]
    assert daemon["Label"] == DAEMON_LABEL and tray["Label"] == TRAY_LABEL
    assert daemon["ProgramArguments"] == [*ctx.command, "serve"] and tray["ProgramArguments"] == [*ctx.command, "tray"]
    assert Path(daemon["ProgramArguments"][0]).is_absolute()
    assert daemon["RunAtLoad"] is True and tray["RunAtLoad"] is True
    assert daemon["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash only
    assert daemon["StandardOutPath"] == str(ctx.log_dir / "launchd-daemon.out.log")
    assert daemon["StandardErrorPath"] == str(ctx.log_dir / "launchd-daemon.err.log")
    expected_env = {"LLMTUNE_COMPANION_HOME": settings_dir} if settings_dir else None
    assert daemon.get("EnvironmentVariables") == expected_env and tray.get("EnvironmentVariables") == expected_env
    # plistlib writes what it reads: the file is the document, byte for byte.
    for path, document in agents.items():
        text = next(spec.content for spec in plan.files if spec.path == path)
        assert plistlib.dumps(document, sort_keys=False).decode() == text
    assert [c.display() for c in plan.commands if c.mode == "always"] == [
        f"launchctl bootstrap gui/501 {shlex.quote(str(daemon_path))}",
        f"launchctl bootstrap gui/501 {shlex.quote(str(tray_path))}"]
    assert [c.argv for c in macos.plan(context(tmp_path, platform="macos", tray=False)).commands][-1][-1] == str(
        daemon_path)


class FakeRegistry:
    """A registry object in memory: what the installer does to HKEY_CURRENT_USER, without Windows."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    def get(self, key: str, name: str) -> str | None:
        return self.values.get((key, name))

    def set(self, key: str, name: str, value: str) -> None:
        self.values[(key, name)] = value

    def delete(self, key: str, name: str) -> bool:
        return self.values.pop((key, name), None) is not None


def windows_split(command: str) -> list[str]:
    """Split a command line by the rules of the Microsoft C runtime (how pythonw reads its argv)."""
    words, word, quoted, backslashes, started = [], "", False, 0, False
    for char in command:
        if char == "\\":
            backslashes += 1
            started = True
            continue
        if char == '"':
            word += "\\" * (backslashes // 2)
            if backslashes % 2:
                word += '"'
            else:
                quoted = not quoted
            backslashes, started = 0, True
            continue
        word += "\\" * backslashes
        backslashes = 0
        if char in " \t" and not quoted:
            if started:
                words.append(word)
            word, started = "", False
        else:
            word += char
            started = True
    word += "\\" * backslashes
    if started:
        words.append(word)
    return words


@pytest.mark.parametrize("settings_dir", [r"C:\Users\a b\AppData\Local\llmtune companion", None])
def test_windows_run_values(tmp_path: Path, settings_dir: str | None) -> None:
    ctx = context(tmp_path, platform="windows", settings_dir=settings_dir)
    plan = windows.plan(ctx)
    registry = FakeRegistry()
    for value in plan.registry:
        registry.set(value.key, value.name, value.value)
    run_key = r"Software\Microsoft\Windows\CurrentVersion\Run"
    assert set(registry.values) == {(run_key, "LLMTune Companion"), (run_key, "LLMTune Companion tray")}
    daemon = windows_split(registry.values[(run_key, "LLMTune Companion")])
    tray = windows_split(registry.values[(run_key, "LLMTune Companion tray")])
    assert daemon[0] == ctx.pythonw and daemon[0].endswith("pythonw.exe")  # no console window
    if settings_dir:
        assert daemon[1:] == ["-m", "llmtune_companion.installers.launch", "--home", settings_dir, "serve"]
    else:
        assert daemon[1:] == ["-m", "llmtune_companion", "serve"]
    assert tray[-1] == "tray" and tray[:-1] == daemon[:-1]
    assert [value.name for value in windows.plan(context(tmp_path, platform="windows", tray=False)).registry] == [
        "LLMTune Companion"]


def test_dry_run_text_holds_every_file_value_and_command(tmp_path: Path) -> None:
    for platform in ("linux", "macos", "windows"):
        plan = {"linux": linux, "macos": macos, "windows": windows}[platform].plan(context(tmp_path, platform=platform))
        text = render(plan)
        for spec in plan.files:
            assert f"## file {spec.path}" in text and spec.content.rstrip() in text
        for value in plan.registry:
            assert f"{value.name} = {value.value}" in text
        for command in plan.commands:
            assert command.display() in text
        assert "nothing was changed" in text.splitlines()[0]
