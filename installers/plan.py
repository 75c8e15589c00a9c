"""What an install writes and runs, as data: printed by `--dry-run`, applied by service.py."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Platform = Literal["linux", "macos", "windows"]
PLATFORMS: tuple[Platform, ...] = ("linux", "macos", "windows")

DAEMON_LABEL = "io.llmtune.companion"
TRAY_LABEL = "io.llmtune.companion.tray"


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a plan depends on, gathered once (so rendering is a pure function of it)."""

    platform: Platform
    # The companion's command line: the absolute path of the installed script (or python -m ...).
    command: tuple[str, ...]
    # The settings directory, when LLMTUNE_COMPANION_HOME chose it: then it is passed explicitly.
    settings_dir: Path | None
    # Where logs go when the service manager captures output (launchd).
    log_dir: Path
    home: Path
    config_home: Path  # $XDG_CONFIG_HOME, ~/.config when unset
    tray: bool = True
    # Linux: a systemd user manager answers; without one the daemon gets an autostart entry too.
    systemd: bool = True
    uid: int = 0
    # Windows: the console-less interpreter that runs `-m llmtune_companion`.
    pythonw: str = "pythonw.exe"


@dataclass(frozen=True, slots=True)
class FileSpec:
    path: Path
    content: str
    what: str  # "systemd unit", "autostart entry", "LaunchAgent", ...


@dataclass(frozen=True, slots=True)
class RegistryValue:
    key: str  # below HKEY_CURRENT_USER
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Command:
    argv: tuple[str, ...]
    why: str
    # "always"; "changed": only when a file of the plan changed; "detach": started in the background
    # (the daemon itself, where no service manager starts it now); "ignore": its failure is expected
    # (unloading what may not be loaded).
    mode: Literal["always", "changed", "detach", "ignore"] = "always"

    def display(self) -> str:
        return shlex.join(self.argv)


@dataclass(slots=True)
class Plan:
    platform: Platform
    manager: str  # "systemd", "autostart", "launchd", "registry"
    files: list[FileSpec] = field(default_factory=list)
    registry: list[RegistryValue] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def render(plan: Plan) -> str:
    """Every file with its full content, every registry value and command: what --dry-run prints."""
    out = [f"# service install plan for {plan.platform} ({plan.manager}); nothing was changed"]
    for spec in plan.files:
        out += ["", f"## file {spec.path} ({spec.what})", spec.content.rstrip("\n")]
    for value in plan.registry:
        out += ["", f"## registry value HKEY_CURRENT_USER\\{value.key}", f"{value.name} = {value.value}"]
    if plan.commands:
        out += ["", "## commands"]
        notes = {"changed": "  (only when a file above changed)", "detach": "  (started in the background)",
                 "ignore": "  (may fail: nothing to undo)", "always": ""}
        out += [f"{command.display()}{notes[command.mode]}" for command in plan.commands]
    for warning in plan.warnings:
        out += ["", f"warning: {warning}"]
    return "\n".join(out) + "\n"
