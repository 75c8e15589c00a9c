"""macOS: LaunchAgents for the daemon and the tray, loaded into the user's GUI domain."""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

from .plan import DAEMON_LABEL, TRAY_LABEL, Command, Context, FileSpec, Plan


def agent_path(ctx: Context, label: str) -> Path:
    return ctx.home / "Library" / "LaunchAgents" / f"{label}.plist"


def domain(ctx: Context) -> str:
    return f"gui/{ctx.uid}"


def agent(ctx: Context, label: str, *args: str) -> dict[str, Any]:
    name = "tray" if label == TRAY_LABEL else "daemon"
    document: dict[str, Any] = {
        "Label": label,
        "ProgramArguments": [*ctx.command, *args],
        "RunAtLoad": True,
        "StandardOutPath": str(ctx.log_dir / f"launchd-{name}.out.log"),
        "StandardErrorPath": str(ctx.log_dir / f"launchd-{name}.err.log"),
    }
    if label == DAEMON_LABEL:
        # Started again after a crash, not after a clean stop (`llmtune-companion stop`).
        document["KeepAlive"] = {"SuccessfulExit": False}
        document["ProcessType"] = "Background"
    else:
        document["LimitLoadToSessionType"] = "Aqua"  # only in a logged-in desktop session
        document["ProcessType"] = "Interactive"
    if ctx.settings_dir is not None:
        document["EnvironmentVariables"] = {"LLMTUNE_COMPANION_HOME": str(ctx.settings_dir)}
    return document


def render_agent(ctx: Context, label: str, *args: str) -> str:
    return plistlib.dumps(agent(ctx, label, *args), fmt=plistlib.FMT_XML, sort_keys=False).decode()


def labels(ctx: Context) -> list[str]:
    return [DAEMON_LABEL, TRAY_LABEL] if ctx.tray else [DAEMON_LABEL]


def plan(ctx: Context) -> Plan:
    result = Plan(platform="macos", manager="launchd")
    for label in labels(ctx):
        args = ("tray",) if label == TRAY_LABEL else ("serve",)
        what = "LaunchAgent for the tray" if label == TRAY_LABEL else "LaunchAgent for the daemon"
        path = agent_path(ctx, label)
        result.files.append(FileSpec(path, render_agent(ctx, label, *args), what))
        # bootstrap refuses a label that is already loaded: unload the old one first.
        result.commands += [
            Command(("launchctl", "bootout", f"{domain(ctx)}/{label}"), "unload an older copy", mode="ignore"),
            Command(("launchctl", "bootstrap", domain(ctx), str(path)), "load it (it starts now and at login)"),
        ]
    return result


def uninstall_commands(ctx: Context) -> list[Command]:
    return [Command(("launchctl", "bootout", f"{domain(ctx)}/{label}"), "stop and unload", mode="ignore")
            for label in (DAEMON_LABEL, TRAY_LABEL)]
