"""Install, uninstall and report the login service: apply a plan, remember what it wrote, undo exactly that."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..config.paths import HOME_ENV, Paths
from . import linux, macos, windows
from .plan import DAEMON_LABEL, TRAY_LABEL, Command, Context, Plan, Platform
from .windows import Registry

MANIFEST = "service.json"  # in the settings directory: what install wrote, for uninstall and status
COMMAND_TIMEOUT = 30.0


class ServiceError(Exception):
    """An install step failed; the message says which and why."""


def host_platform() -> Platform:
    if sys.platform == "darwin":
        return "macos"
    if sys.platform == "win32":
        return "windows"
    return "linux"


def companion_command() -> tuple[str, ...]:
    """The installed `llmtune-companion` of this environment (venv, pipx, uv tool), as an absolute path."""
    scripts = Path(sys.executable).parent
    for name in ("llmtune-companion", "llmtune-companion.exe"):
        candidate = scripts / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return (str(candidate.absolute()),)
    found = shutil.which("llmtune-companion")
    if found:
        return (str(Path(found).absolute()),)
    return (str(Path(sys.executable).absolute()), "-m", "llmtune_companion")


def pythonw_path() -> str:
    """The console-less interpreter beside this one (Windows); the name alone when rendering elsewhere."""
    candidate = Path(sys.executable).with_name("pythonw.exe")
    return str(candidate) if candidate.exists() else "pythonw.exe"


def run_command(argv: tuple[str, ...], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                              env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]}: no answer within {COMMAND_TIMEOUT:.0f}s")


def systemd_user_running() -> bool:
    """A systemd user manager answers for this user (not the case in most containers or without login)."""
    if shutil.which("systemctl") is None:
        return False
    result = run_command(("systemctl", "--user", "show", "--property=Version", "--value"))
    return result.returncode == 0 and bool(result.stdout.strip())


def make_context(platform: Platform, paths: Paths, *, tray: bool = True, probe: bool = True,
                 environ: Mapping[str, str] | None = None) -> Context:
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return Context(
        platform=platform,
        command=companion_command(),
        settings_dir=paths.root if env.get(HOME_ENV) else None,
        log_dir=paths.log_dir,
        home=home,
        config_home=config_home,
        tray=tray,
        systemd=systemd_user_running() if platform == "linux" and probe else True,
        uid=os.getuid() if hasattr(os, "getuid") else 0,
        pythonw=pythonw_path(),
    )


def make_plan(ctx: Context) -> Plan:
    if ctx.platform == "macos":
        return macos.plan(ctx)
    if ctx.platform == "windows":
        return windows.plan(ctx)
    return linux.plan(ctx)


# -- the record of what install wrote ------------------------------------------------------------


@dataclass
class Manifest:
    platform: Platform
    manager: str
    files: list[str] = field(default_factory=list)
    registry: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, paths: Paths) -> Manifest | None:
        try:
            data = orjson.loads((paths.root / MANIFEST).read_bytes())
            return cls(platform=data["platform"], manager=data["manager"], files=list(data["files"]),
                       registry=[(str(key), str(name)) for key, name in data["registry"]])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def write(self, paths: Paths) -> None:
        paths.ensure()
        body = {"platform": self.platform, "manager": self.manager, "files": self.files, "registry": self.registry}
        (paths.root / MANIFEST).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))


def candidates(ctx: Context) -> Manifest:
    """Everything any install on this platform could have written: uninstall's guess without a record."""
    if ctx.platform == "linux":
        files = [linux.unit_path(ctx), linux.autostart_path(ctx, linux.DAEMON_DESKTOP),
                 linux.autostart_path(ctx, linux.TRAY_DESKTOP)]
        manager = "systemd"
    elif ctx.platform == "macos":
        files = [macos.agent_path(ctx, label) for label in (DAEMON_LABEL, TRAY_LABEL)]
        manager = "launchd"
    else:
        files, manager = [], "registry"
    registry = ([(windows.RUN_KEY, windows.DAEMON_VALUE), (windows.RUN_KEY, windows.TRAY_VALUE)]
                if ctx.platform == "windows" else [])
    return Manifest(ctx.platform, manager, [str(path) for path in files], registry)


# -- the running daemon --------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: an exited child not yet reaped by its parent still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def daemon_pid(paths: Paths) -> int | None:
    from ..server import read_daemon_file

    pid = (read_daemon_file(paths) or {}).get("pid")
    return pid if isinstance(pid, int) and pid_alive(pid) else None


def healthy_url(paths: Paths) -> str | None:
    """The running daemon's URL when it answers /healthz."""
    from ..cli.client import daemon_url

    url = daemon_url(paths)
    if url is None or not url.startswith("http://"):
        return None
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:  # noqa: S310 (loopback http)
            return url if response.status == 200 else None
    except OSError:
        return None


def wait_healthy(paths: Paths, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        url = healthy_url(paths)
        if url is not None or time.monotonic() > deadline:
            return url
        time.sleep(0.2)


def stop_daemon(paths: Paths, timeout: float = 20.0) -> bool:
    """SIGTERM the daemon of this settings directory (a graceful stop) and wait; True if one was stopped."""
    pid = daemon_pid(paths)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def start_detached(argv: tuple[str, ...], paths: Paths) -> None:
    """Run the daemon in the background, outliving this command; its early errors go to logs/."""
    paths.ensure()
    log = (paths.log_dir / "autostart.log").open("ab")
    options: dict[str, Any] = {}
    if sys.platform == "win32":
        options["creationflags"] = (subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
                                    | subprocess.CREATE_NO_WINDOW)
    else:
        options["start_new_session"] = True
    with log:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, **options)


# -- install, uninstall, status ------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _write_file(path: Path, content: str) -> bool:
    """Write `content` unless it is already there; True when the file changed."""
    try:
        if path.read_text(encoding="utf-8") == content:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def _run(command: Command, report: Report) -> None:
    result = run_command(command.argv)
    if result.returncode == 0 or command.mode == "ignore":
        if command.mode != "ignore":
            report.lines.append(f"ran {command.display()}")
        return
    detail = (result.stderr or result.stdout).strip()
    raise ServiceError(f"`{command.display()}` failed ({result.returncode}): {detail}")


def install(plan: Plan, paths: Paths, registry: Registry | None = None) -> Report:
    report = Report(warnings=list(plan.warnings))
    changed = False
    for spec in plan.files:
        if _write_file(spec.path, spec.content):
            changed = True
            report.lines.append(f"wrote {spec.path} ({spec.what})")
        else:
            report.lines.append(f"unchanged {spec.path} ({spec.what})")
    if plan.registry:
        if registry is None:
            raise ServiceError("no registry to write the Run values to")
        for value in plan.registry:
            if registry.get(value.key, value.name) != value.value:
                registry.set(value.key, value.name, value.value)
                changed = True
            report.lines.append(f"set HKEY_CURRENT_USER\\{value.key}\\{value.name}")
    Manifest(plan.platform, plan.manager, [str(spec.path) for spec in plan.files],
             [(value.key, value.name) for value in plan.registry]).write(paths)
    for command in plan.commands:
        if command.mode == "changed" and not changed:
            continue
        if command.mode == "detach":
            if daemon_pid(paths) is None:
                start_detached(command.argv, paths)
                report.lines.append(f"started {command.display()}")
            continue
        _run(command, report)
    return report


def _remove_enable_link(ctx: Context, report: Report) -> None:
    """The link `systemctl --user enable` made, when disable could not remove it (no manager running)."""
    link = linux.enable_link(ctx)
    if link.is_symlink() and Path(os.readlink(link)).name == linux.UNIT:
        link.unlink()
        report.lines.append(f"removed {link}")
        with contextlib.suppress(OSError):
            link.parent.rmdir()  # only when empty


def uninstall(ctx: Context, paths: Paths, registry: Registry | None = None) -> Report:
    report = Report()
    manifest = Manifest.read(paths) or candidates(ctx)
    files = [Path(name) for name in manifest.files]
    installed_unit = str(linux.unit_path(ctx)) in manifest.files and linux.unit_path(ctx).exists()
    if ctx.platform == "linux" and installed_unit and ctx.systemd:
        for command in linux.uninstall_commands(ctx):
            _run(command, report)
        report.lines.append(f"stopped and disabled {linux.UNIT}")
    elif ctx.platform == "macos":
        for command in macos.uninstall_commands(ctx):
            _run(command, report)
    elif stop_daemon(paths):
        report.lines.append("stopped the daemon")
    for path in files:
        if path.exists():
            path.unlink()
            report.lines.append(f"removed {path}")
    if ctx.platform == "linux":
        _remove_enable_link(ctx, report)
        if installed_unit and ctx.systemd:
            for command in linux.after_uninstall_commands(ctx):
                _run(command, report)
    for key, name in manifest.registry:
        if registry is not None and registry.delete(key, name):
            report.lines.append(f"deleted HKEY_CURRENT_USER\\{key}\\{name}")
    (paths.root / MANIFEST).unlink(missing_ok=True)
    return report


def status(ctx: Context, paths: Paths, registry: Registry | None = None) -> dict[str, Any]:
    manifest = Manifest.read(paths)
    known = manifest or candidates(ctx)
    files = [name for name in known.files if Path(name).exists()]
    values = [(key, name) for key, name in known.registry if registry is not None and registry.get(key, name)]
    installed = bool(files or values)
    manager = known.manager
    enabled = installed
    running = healthy_url(paths) is not None
    if ctx.platform == "linux":
        unit = str(linux.unit_path(ctx))
        if unit in files:
            manager = "systemd"
            if ctx.systemd:
                enabled = run_command(("systemctl", "--user", "is-enabled", linux.UNIT)).stdout.strip() == "enabled"
                running = run_command(("systemctl", "--user", "is-active", linux.UNIT)).stdout.strip() == "active"
            else:
                enabled = linux.enable_link(ctx).is_symlink()
        else:
            manager = "autostart"
            enabled = str(linux.autostart_path(ctx, linux.DAEMON_DESKTOP)) in files
    return {
        "installed": installed,
        "enabled": enabled,
        "running": running,
        "files": files + [f"HKEY_CURRENT_USER\\{key}\\{name}" for key, name in values],
        "platform": ctx.platform,
        "manager": manager if installed else None,
    }
