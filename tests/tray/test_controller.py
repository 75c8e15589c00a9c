"""The model and controller against the real daemon on loopback: approvals, tool modes, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from llmtune_companion.tray.model import Action, IconState, Item, TrayState

from tests.conftest import Daemon, StandIn, StartDaemon
from tests.tray.conftest import TIMEOUT, Tray, announce, start_tray
from tests.tray.test_model import find


def chat(daemon: Daemon) -> asyncio.Task[Any]:
    async def ask() -> Any:
        client = daemon.openai(timeout=TIMEOUT)
        return await client.chat.completions.create(
            model="meta-llama/Llama-3.3-70B-Instruct", messages=[{"role": "user", "content": "run it"}])

    return asyncio.create_task(ask())


async def entry_for_pending(tray: Tray) -> tuple[Item, float]:
    """The menu entry of the one pending approval, and how long after the event it was in the menu."""
    async with asyncio.timeout(TIMEOUT):
        state = await tray.controller.wait_for(lambda state: bool(state.approvals))
    [approval] = state.approvals
    shown_at = next(at for at, snap in tray.snapshots if any(i.text.startswith("Approvals (") for i in snap.menu))
    created = approval.created_at  # the event's time
    menu = tray.controller.snapshot().menu
    return find(menu, approval.label), shown_at - created


def tool_results(standin: StandIn) -> list[str]:
    return [m["content"] for r in standin.api.requests if isinstance(r.json, dict)
            for m in r.json.get("messages", []) if m.get("role") == "tool"]


async def test_allow_from_the_menu_runs_the_held_call(daemon: Daemon, standin: StandIn, tray: Tray,
                                                      project: Path) -> None:
    standin.api.script_tool_call("run_terminal", {"command": "echo allowed > allowed.txt"})
    reply = chat(daemon)
    entry, delay = await entry_for_pending(tray)
    assert entry.text == "run_terminal echo allowed > allowed.txt · default"
    assert delay < 0.5, f"the approval reached the menu {delay:.3f}s after its event"
    assert tray.controller.snapshot().icon is IconState.APPROVALS
    assert [n.kind for n in tray.notifications] == ["approvals"]
    assert tray.notifications[0].message == "run_terminal echo allowed > allowed.txt in workspace default"
    assert not (project / "allowed.txt").exists()  # held until someone decides

    allow = find(entry.submenu, "Allow")
    await tray.controller.perform(allow.action or Action("none"))
    answer = await asyncio.wait_for(reply, TIMEOUT)
    assert (project / "allowed.txt").read_text() == "allowed\n"
    assert answer.choices[0].finish_reason == "stop"
    assert tool_results(standin) == ["(no output)\n[exit code 0; " + tool_results(standin)[0].split("; ", 1)[1]]
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: not state.approvals)
    assert tray.controller.snapshot().icon is IconState.RUNNING


async def test_deny_from_the_menu_refuses_the_call(daemon: Daemon, standin: StandIn, tray: Tray,
                                                   project: Path) -> None:
    standin.api.script_tool_call("run_terminal", {"command": "echo denied > denied.txt"})
    reply = chat(daemon)
    entry, _ = await entry_for_pending(tray)
    await tray.controller.perform(find(entry.submenu, "Deny").action or Action("none"))
    answer = await asyncio.wait_for(reply, TIMEOUT)
    assert answer.choices[0].message.content  # the model still answers, told the call was refused
    assert not (project / "denied.txt").exists()
    assert any("denied from the tray" in text for text in tool_results(standin))
    # Deciding again (the menu was stale) says so instead of failing silently.
    await tray.controller.perform(find(entry.submenu, "Allow").action or Action("none"))
    assert "no pending approval" in tray.notifications[-1].message


async def test_tool_mode_radio_items_change_the_workspace(daemon: Daemon, tray: Tray) -> None:
    menu = tray.controller.snapshot().menu
    modes = {item.text: item for item in find(menu, "Tools: default").submenu}
    assert modes["execute"].checked and not modes["gate"].checked
    await tray.controller.perform(modes["gate"].action or Action("none"))
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: state.workspaces[0].tools == "gate")
    assert daemon.runtime.config.workspaces["default"].settings.tools == "gate"
    assert 'tools = "gate"' in daemon.paths.config_file.read_text()
    modes = {item.text: item for item in find(tray.controller.snapshot().menu, "Tools: default").submenu}
    assert modes["gate"].checked and not modes["execute"].checked


async def test_invalid_settings_turn_the_icon_red_and_notifications_follow_the_tray_table(
        daemon: Daemon, standin: StandIn, tray: Tray) -> None:
    good = daemon.paths.config_file.read_text()
    daemon.paths.config_file.write_text(good + "[server]\nport = \"8742\"\n")
    assert not daemon.runtime.reload()  # what the settings watcher does on a change
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: state.config_error is not None)
    assert tray.controller.snapshot().icon is IconState.ERROR
    assert tray.controller.snapshot().menu[0].text.startswith("Settings invalid: config.toml: server.port")

    daemon.paths.config_file.write_text(good + "[tray]\nnotify_approvals = false\n")
    assert daemon.runtime.reload()
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: state.config_error is None)
    assert not tray.controller.settings.notify_approvals
    standin.api.script_tool_call("run_terminal", {"command": "true"})
    reply = chat(daemon)
    entry, _ = await entry_for_pending(tray)
    assert tray.notifications == []  # turned off in [tray]
    await tray.controller.perform(find(entry.submenu, "Allow").action or Action("none"))
    await asyncio.wait_for(reply, TIMEOUT)


async def test_copy_and_open_actions(daemon: Daemon, tray: Tray) -> None:
    menu = tray.controller.snapshot().menu
    await tray.controller.perform(find(menu, "Copy base URL").action or Action("none"))
    await tray.controller.perform(find(menu, "Copy token").action or Action("none"))
    assert tray.desktop.copied == [daemon.base_url, daemon.token]
    assert tray.notifications[-1].message == "Copied the local token of default"  # the token itself never shown
    await tray.controller.perform(find(menu, "View logs").action or Action("none"))
    await tray.controller.perform(find(menu, "Open settings folder").action or Action("none"))
    assert tray.desktop.opened == [str(daemon.paths.log_dir), str(daemon.paths.root)]
    await tray.controller.perform(find(menu, "Show status").action or Action("none"))
    assert tray.notifications[-1].message.startswith("Running · 127.0.0.1:")


async def test_reconnects_after_the_daemon_goes_away_and_comes_back(
        daemon: Daemon, tray: Tray, start_daemon: StartDaemon, standin: StandIn) -> None:
    await daemon.server.close()
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: not state.running)
    assert tray.controller.snapshot().icon is IconState.STOPPED
    assert find(tray.controller.snapshot().menu, "Start companion").action == Action("start")
    await asyncio.sleep(0.6)  # past the grace a restart gets
    assert [n.kind for n in tray.notifications] == ["daemon"]

    again = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    started = time.monotonic()
    announce(again)  # a new daemon.json: the tray notices it without polling
    async with asyncio.timeout(TIMEOUT):
        state = await tray.controller.wait_for(lambda state: state.running and state.url == again.url)
    assert time.monotonic() - started < 2.0
    assert isinstance(state, TrayState) and tray.controller.snapshot().icon is IconState.RUNNING


async def test_stop_from_the_menu_is_not_reported_as_unexpected(daemon: Daemon, tray: Tray) -> None:
    # This daemon has no shutdown route and its daemon.json names the test process, which the tray never
    # signals; the server then stops as a service manager would stop it.
    await tray.controller.perform(Action("stop"))
    await daemon.server.close()
    async with asyncio.timeout(TIMEOUT):
        await tray.controller.wait_for(lambda state: not state.running)
    await asyncio.sleep(0.6)
    assert [n.kind for n in tray.notifications if n.kind == "daemon"] == []


async def test_a_tray_started_before_the_daemon_finds_it(home: Any, start_daemon: StartDaemon,
                                                          standin: StandIn) -> None:
    tray, task = await start_tray(home)
    try:
        await asyncio.sleep(0.3)
        assert tray.controller.state == TrayState() and tray.controller.snapshot().icon is IconState.STOPPED
        daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
        announce(daemon)
        async with asyncio.timeout(TIMEOUT):
            await tray.controller.wait_for(lambda state: state.running)
        assert tray.notifications == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_fine_tune_job_events_become_notifications(start_daemon: StartDaemon, standin: StandIn) -> None:
    from tests.daemon.upstream.test_jobs import create_job, jobs_config

    daemon = await start_daemon(config=jobs_config(), env={"LLMTUNE_BASE_URL": standin.url})
    announce(daemon)
    tray, task = await start_tray(daemon.paths)
    try:
        async with asyncio.timeout(TIMEOUT):
            await tray.controller.wait_for(lambda state: state.running)
        job_id = (await create_job(daemon))["id"]
        standin.api.advance_job(job_id, "running")
        standin.api.advance_job(job_id, "completed")
        model = standin.api.deploy_job(job_id)
        async with asyncio.timeout(TIMEOUT):
            while len(tray.notifications) < 2:
                await asyncio.sleep(0.05)
        assert [(n.kind, n.title) for n in tray.notifications] == [("jobs", "Fine-tune completed"),
                                                                    ("jobs", "Model deployed")]
        assert tray.notifications[1].message == f"{model} is ready to use"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_open_dashboard_opens_a_one_time_login_link(daemon: Daemon, tray: Tray) -> None:
    from llmtune_companion.tray.features import detect

    features = detect()
    assert features.dashboard  # the dashboard is installed: its item is the menu's default
    tray.controller.features = features
    item = find(tray.controller.snapshot().menu, "Open dashboard")
    assert item.default
    await tray.controller.perform(item.action or Action("none"))
    [url] = tray.desktop.opened
    assert url.startswith(daemon.url + "/dashboard/login?code=")
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as response:
        assert response.status in (302, 303)  # the code logs the browser in, once


async def test_start_at_login_follows_service_status(daemon: Daemon, tray: Tray, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune_companion.tray.features import detect

    for name in ("HOME", "XDG_CONFIG_HOME"):  # a user with nothing installed, whatever this machine has
        monkeypatch.setenv(name, str(tmp_path / "user"))

    tray.controller.features = detect()
    assert tray.controller.features.service  # the installers are installed
    await tray.controller.refresh_start_at_login()
    assert tray.desktop.commands == [("service", "status", "--json")]
    item = find(tray.controller.snapshot().menu, "Start at login")
    assert item.checked is False and item.action == Action("toggle_start_at_login")  # not installed here
