"""The pystray layer on pystray's `dummy` backend: the built menu's items are called directly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from llmtune_companion.tray import shell
from llmtune_companion.tray.icon import COLOURS, SIZE, draw
from llmtune_companion.tray.model import Action, Features, IconState

from tests.conftest import Daemon, StandIn
from tests.tray.conftest import TIMEOUT, Tray
from tests.tray.test_controller import chat


@pytest.fixture
def pystray(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv(shell.BACKEND_ENV, "dummy")
    module = shell.load_pystray()
    assert module.Icon.__module__ == "pystray._base"  # the dummy backend's Icon is the base class
    yield module


def item_named(menu: Any, *path: str) -> Any:
    for item in menu.items:
        if str(item.text) == path[0]:
            return item if len(path) == 1 else item_named(item.submenu, *path[1:])
    raise LookupError(path)


async def test_dummy_menu_items_call_the_controller(pystray: ModuleType, daemon: Daemon, standin: StandIn,
                                                    tray: Tray, project: Path) -> None:
    loop = asyncio.get_running_loop()
    chosen: list[asyncio.Task[None]] = []

    def choose(action: Action) -> None:
        chosen.append(loop.create_task(tray.controller.perform(action)))

    standin.api.script_tool_call("write_file", {"path": "notes.txt", "content": "from the tray\n"})
    reply = chat(daemon)
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: bool(state.approvals))
    menu = shell.to_pystray_menu(pystray, tray.controller.snapshot().menu, choose)
    icon = pystray.Icon("test", icon=draw(IconState.APPROVALS, 1), menu=None)

    status = item_named(menu, tray.controller.snapshot().menu[0].text)
    assert not status.enabled  # the status line is information only
    assert item_named(menu, "Show status").default
    gate = item_named(menu, "Tools: default", "gate")
    assert gate.radio and gate.checked is False and item_named(menu, "Tools: default", "execute").checked

    item_named(menu, "Approvals (1)", "write_file notes.txt · default", "Allow and remember")(icon)
    await asyncio.gather(*chosen)
    answer = await asyncio.wait_for(reply, TIMEOUT)
    assert answer.choices[0].finish_reason == "stop"
    assert (project / "notes.txt").read_text() == "from the tray\n"
    assert 'allow = ["write_file' in daemon.paths.config_file.read_text()  # remembered as a policy rule

    gate(icon)
    await asyncio.gather(*chosen)
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: state.workspaces[0].tools == "gate")
    item_named(menu, "Copy base URL")(icon)
    await asyncio.gather(*chosen)
    assert tray.desktop.copied == [daemon.base_url]


def test_items_for_later_commands_appear_only_with_them(pystray: ModuleType) -> None:
    from llmtune_companion.tray.model import TrayState, build_menu

    state = TrayState(running=True, url="http://127.0.0.1:8742")
    plain = shell.to_pystray_menu(pystray, build_menu(state, Features()), lambda action: None)
    names = [str(item.text) for item in plain.items]
    assert "Open dashboard" not in names and "Connect IDE" not in names and "Start at login" not in names
    full = shell.to_pystray_menu(pystray, build_menu(state, Features(dashboard=True, service=True, connect=True,
                                                                     start_at_login=False)), lambda action: None)
    assert item_named(full, "Open dashboard").default
    assert item_named(full, "Connect IDE", "Continue").enabled
    assert item_named(full, "Start at login").checked is False


def test_features_follow_the_installed_modules() -> None:
    from llmtune_companion.tray.features import cli_commands, detect, module_exists

    assert module_exists("llmtune_companion.tray") and not module_exists("llmtune_companion.no_such_thing")
    assert not module_exists("no_such_package.child")  # a missing parent is "no", not an error
    assert "tray" in cli_commands()
    features = detect()
    assert features.dashboard == module_exists("llmtune_companion.dashboard")
    assert features.service == (module_exists("llmtune_companion.installers") and "service" in cli_commands())


def test_icons_are_drawn_in_each_state_colour() -> None:
    for state, colour in COLOURS.items():
        image = draw(state, 3)
        assert image.size == (SIZE, SIZE) and image.mode == "RGBA"
        assert image.getpixel((14, SIZE // 2))[:3] == colour  # the disc, left of the glyph
        assert image.getpixel((0, 0))[3] == 0  # transparent corners


def test_no_display_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "LLMTUNE_COMPANION_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "llmtune_companion", "tray"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("llmtune-companion: no system tray can be shown here")
    assert "graphical session" in result.stderr and "Traceback" not in result.stderr
