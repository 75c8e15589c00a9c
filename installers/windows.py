"""Windows: values under HKCU\\...\\Run start the daemon and the tray at login, with pythonw (no console)."""

from __future__ import annotations

import subprocess
import sys
from typing import Protocol

from .plan import Command, Context, Plan, RegistryValue

RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
DAEMON_VALUE = "LLMTune Companion"
TRAY_VALUE = "LLMTune Companion tray"


class Registry(Protocol):
    """The few registry operations the installer needs, all below HKEY_CURRENT_USER."""

    def get(self, key: str, name: str) -> str | None: ...

    def set(self, key: str, name: str, value: str) -> None: ...

    def delete(self, key: str, name: str) -> bool: ...


def launch_words(ctx: Context, *args: str) -> list[str]:
    """pythonw runs the package (a console script would open a console window)."""
    if ctx.settings_dir is not None:
        # A Run value sets no environment: the launcher module takes the settings directory instead.
        return [ctx.pythonw, "-m", "llmtune_companion.installers.launch", "--home", str(ctx.settings_dir), *args]
    return [ctx.pythonw, "-m", "llmtune_companion", *args]


def run_value(ctx: Context, *args: str) -> str:
    return subprocess.list2cmdline(launch_words(ctx, *args))


def value_names(ctx: Context) -> list[str]:
    return [DAEMON_VALUE, TRAY_VALUE] if ctx.tray else [DAEMON_VALUE]


def plan(ctx: Context) -> Plan:
    result = Plan(platform="windows", manager="registry")
    result.registry.append(RegistryValue(RUN_KEY, DAEMON_VALUE, run_value(ctx, "serve")))
    if ctx.tray:
        result.registry.append(RegistryValue(RUN_KEY, TRAY_VALUE, run_value(ctx, "tray")))
    result.commands.append(Command(tuple(launch_words(ctx, "serve")), "run the daemon now", mode="detach"))
    return result


if sys.platform == "win32":
    import winreg

    class WindowsRegistry:
        """HKEY_CURRENT_USER through winreg."""

        def get(self, key: str, name: str) -> str | None:
            try:
                with winreg.OpenKey(winreg.HKEY_CURRENT_USER, key) as handle:
                    value, _kind = winreg.QueryValueEx(handle, name)
            except FileNotFoundError:
                return None
            return str(value)

        def set(self, key: str, name: str, value: str) -> None:
            with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, key, 0, winreg.KEY_SET_VALUE) as handle:
                winreg.SetValueEx(handle, name, 0, winreg.REG_SZ, value)

        def delete(self, key: str, name: str) -> bool:
            try:
                with winreg.OpenKey(winreg.HKEY_CURRENT_USER, key, 0, winreg.KEY_SET_VALUE) as handle:
                    winreg.DeleteValue(handle, name)
            except FileNotFoundError:
                return False
            return True


def system_registry() -> Registry | None:
    """The real registry on Windows; None elsewhere (tests inject their own)."""
    if sys.platform == "win32":
        return WindowsRegistry()
    return None
