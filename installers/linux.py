"""Linux: a systemd user unit for the daemon, XDG autostart entries for the tray (and for the daemon
where no systemd user manager runs)."""

from __future__ import annotations

import re
from pathlib import Path

from .plan import Command, Context, FileSpec, Plan

UNIT = "llmtune-companion.service"
DAEMON_DESKTOP = "llmtune-companion.desktop"
TRAY_DESKTOP = "llmtune-companion-tray.desktop"


def unit_path(ctx: Context) -> Path:
    return ctx.config_home / "systemd" / "user" / UNIT


def enable_link(ctx: Context) -> Path:
    """The symlink `systemctl --user enable` makes (WantedBy=default.target)."""
    return ctx.config_home / "systemd" / "user" / "default.target.wants" / UNIT


def autostart_path(ctx: Context, name: str) -> Path:
    return ctx.config_home / "autostart" / name


def systemd_quote(word: str) -> str:
    """One ExecStart word: '%' and '$' are expanded by systemd, so they are doubled; quoted when needed."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(ctx: Context) -> str:
    exec_start = " ".join(systemd_quote(word) for word in (*ctx.command, "serve"))
    lines = [
        "[Unit]",
        "Description=LLMTune Companion (OpenAI-compatible endpoint on 127.0.0.1)",
        # Give up after five quick failures (a port already taken) instead of retrying forever.
        "StartLimitIntervalSec=60",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_start}",
    ]
    if ctx.settings_dir is not None:
        value = f"LLMTUNE_COMPANION_HOME={ctx.settings_dir}".replace("%", "%%")
        lines.append('Environment="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    lines += [
        "Restart=on-failure",
        "RestartSec=2",
        # Exit status 2 is invalid settings: starting again cannot help until they are fixed.
        "RestartPreventExitStatus=2",
        # The daemon stops cleanly on SIGTERM; in-flight requests get this long to finish.
        "TimeoutStopSec=20",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


_DESKTOP_RESERVED = re.compile(r"[\s\"'\\><~|&;$*?#()`]")


def desktop_exec(words: list[str]) -> str:
    """An Exec= value per the Desktop Entry spec: quote words with reserved characters, escape '%'."""
    quoted = []
    for word in words:
        word = word.replace("%", "%%")
        if _DESKTOP_RESERVED.search(word):
            word = '"' + re.sub(r'(["`$\\])', r"\\\1", word) + '"'
        quoted.append(word)
    # Exec is a string value: its own escape rule doubles every backslash once more.
    return " ".join(quoted).replace("\\", "\\\\")


def _launch_words(ctx: Context, *args: str) -> list[str]:
    words = [*ctx.command, *args]
    if ctx.settings_dir is not None:
        words = ["env", f"LLMTUNE_COMPANION_HOME={ctx.settings_dir}", *words]
    return words


def render_desktop(ctx: Context, name: str, comment: str, *args: str) -> str:
    lines = [
        "[Desktop Entry]",
        "Type=Application",
        f"Name={name}",
        f"Comment={comment}",
        f"Exec={desktop_exec(_launch_words(ctx, *args))}",
        "Terminal=false",
        "NoDisplay=true",
        "X-GNOME-Autostart-enabled=true",
        "",
    ]
    return "\n".join(lines)


def plan(ctx: Context) -> Plan:
    result = Plan(platform="linux", manager="systemd" if ctx.systemd else "autostart")
    if ctx.systemd:
        result.files.append(FileSpec(unit_path(ctx), render_unit(ctx), "systemd user unit"))
        result.commands += [
            Command(("systemctl", "--user", "daemon-reload"), "read the unit"),
            Command(("systemctl", "--user", "enable", "--now", UNIT), "start at login, and now"),
            Command(("systemctl", "--user", "try-restart", UNIT), "run the new unit", mode="changed"),
        ]
    else:
        comment = "Starts the LLMTune Companion daemon at login"
        result.files.append(FileSpec(autostart_path(ctx, DAEMON_DESKTOP),
                                     render_desktop(ctx, "LLMTune Companion", comment, "serve"),
                                     "autostart entry for the daemon"))
        result.commands.append(Command((*ctx.command, "serve"), "run the daemon now", mode="detach"))
        result.warnings.append(
            "no systemd user manager answers: the daemon starts at your next desktop login (XDG autostart) "
            "and nothing restarts it if it crashes")
    if ctx.tray:
        result.files.append(FileSpec(autostart_path(ctx, TRAY_DESKTOP),
                                     render_desktop(ctx, "LLMTune Companion tray",
                                                    "The LLMTune Companion's tray icon", "tray"),
                                     "autostart entry for the tray"))
    return result


def uninstall_commands(ctx: Context) -> list[Command]:
    return [Command(("systemctl", "--user", "disable", "--now", UNIT), "stop, and no more at login",
                    mode="ignore")]


def after_uninstall_commands(ctx: Context) -> list[Command]:
    return [Command(("systemctl", "--user", "daemon-reload"), "forget the unit", mode="ignore")]
