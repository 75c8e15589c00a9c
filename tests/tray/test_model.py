"""The pure model: status and events in; icon state, tooltip, menu and notifications out."""

from __future__ import annotations

from typing import Any

from llmtune_companion.tray.model import (
    Action,
    Features,
    IconState,
    Item,
    TrayState,
    apply_event,
    build_menu,
    from_status,
    icon_state,
    notification_for,
    status_line,
    tooltip,
)

STATUS: dict[str, Any] = {
    "config": {"valid": True, "error": None},
    "workspaces": [{"name": "default", "tools": "gate", "root": "/src"}, {"name": "bare", "tools": "passthrough"}],
    "model_cache": [{"key": "llmtune@default", "models": 11}, {"key": "local", "models": 1}],
}
PENDING = {"type": "approval.pending", "approval": {
    "id": "apr_1", "workspace": "default", "tool": "write_file", "arguments": {"path": "src/app.py", "content": "x"},
    "preview": {"diff": "..."}}}


def find(items: tuple[Item, ...], text: str) -> Item:
    for item in items:
        if item.text == text:
            return item
        if item.submenu:
            try:
                return find(item.submenu, text)
            except LookupError:
                pass
    raise LookupError(text)


def texts(items: tuple[Item, ...]) -> list[str]:
    return [item.text for item in items]


def test_running_state_icon_tooltip_and_status_line() -> None:
    state = from_status("http://127.0.0.1:8742", STATUS)
    assert icon_state(state) is IconState.RUNNING
    assert status_line(state) == "Running · 127.0.0.1:8742 · 12 models"
    assert tooltip(state) == "LLMTune companion\nRunning · 127.0.0.1:8742 · 12 models"
    assert [(ws.name, ws.tools, ws.has_root) for ws in state.workspaces] == [("default", "gate", True),
                                                                            ("bare", "passthrough", False)]
    assert status_line(from_status("http://127.0.0.1:1", {**STATUS, "model_cache": []})) == "Running · 127.0.0.1:1"


def test_stopped_invalid_and_fallback_states() -> None:
    assert (icon_state(TrayState()), status_line(TrayState())) == (IconState.STOPPED, "Stopped")
    invalid = from_status("http://127.0.0.1:8742", {**STATUS, "config": {"valid": False, "error": "port: bad"}})
    assert (icon_state(invalid), status_line(invalid)) == (IconState.ERROR, "Settings invalid: port: bad")
    state = from_status("http://127.0.0.1:8742", STATUS)
    state = apply_event(state, {"type": "hosted.fallback", "backend": "llmtune", "fallback": "local/qwen",
                                "error": "upstream_unreachable"})
    assert (icon_state(state), status_line(state)) == (IconState.ERROR, "Hosted API unreachable, using local/qwen")
    state = apply_event(state, {"type": "hosted.recovered"})
    assert icon_state(state) is IconState.RUNNING
    broken = apply_event(state, {"type": "settings.reloaded", "valid": False, "error": "routes[0]: nope"})
    assert status_line(broken) == "Settings invalid: routes[0]: nope"
    assert icon_state(apply_event(broken, {"type": "settings.reloaded", "valid": True})) is IconState.RUNNING


def test_pending_approvals_make_the_icon_amber_and_a_menu_entry() -> None:
    state = apply_event(from_status("http://127.0.0.1:8742", STATUS), PENDING)
    assert apply_event(state, PENDING) == state  # a replayed event is not a second entry
    assert icon_state(state) is IconState.APPROVALS
    assert "1 tool call waiting for approval" in tooltip(state)
    menu = build_menu(state, Features())
    assert texts(menu)[:3] == ["Running · 127.0.0.1:8742 · 12 models", "-", "Approvals (1)"]
    entry = find(menu, "write_file src/app.py · default")
    assert [(i.text, i.action) for i in entry.submenu] == [
        ("Allow", Action("allow", ("apr_1",))), ("Allow and remember", Action("allow_remember", ("apr_1",))),
        ("Deny", Action("deny", ("apr_1",)))]
    with_dashboard = find(build_menu(state, Features(dashboard=True)), "write_file src/app.py · default")
    assert with_dashboard.submenu[-1] == Item("Open in dashboard", Action("open_dashboard", ("apr_1",)))
    resolved = apply_event(state, {"type": "approval.resolved", "id": "apr_1", "allow": True})
    assert icon_state(resolved) is IconState.RUNNING and "Approvals (1)" not in texts(build_menu(resolved, Features()))


def test_menu_items_follow_features_and_state() -> None:
    running = from_status("http://127.0.0.1:8742", STATUS)
    menu = build_menu(running, Features())
    assert find(menu, "Show status").default and "Open dashboard" not in texts(menu)
    assert "Connect IDE" not in texts(menu) and "Start at login" not in texts(menu)
    modes = find(menu, "Tools: default").submenu
    assert [(i.text, i.checked, i.radio, i.enabled) for i in modes] == [
        ("passthrough", False, True, True), ("gate", True, True, True), ("execute", False, True, True)]
    assert modes[2].action == Action("set_tools", ("default", "execute"))
    # Without a root only passthrough can be chosen.
    assert [i.enabled for i in find(menu, "Tools: bare").submenu] == [True, False, False]
    assert [i.action for i in find(menu, "Copy token").submenu] == [Action("copy_token", ("default",)),
                                                                    Action("copy_token", ("bare",))]
    assert texts(menu)[-4:] == ["Restart companion", "Stop companion", "-", "Quit"]

    everything = build_menu(running, Features(dashboard=True, service=True, connect=True, start_at_login=True))
    assert find(everything, "Open dashboard").default and "Show status" not in texts(everything)
    assert find(everything, "Continue").action == Action("connect_continue")
    assert find(everything, "Start at login").checked is True

    stopped = build_menu(TrayState(), Features())
    assert texts(stopped) == ["Stopped", "-", "Show status", "-", "View logs", "Open settings folder",
                              "Start companion", "-", "Quit"]


def test_notifications_per_event() -> None:
    approval = notification_for(PENDING)
    assert approval is not None and approval.kind == "approvals"
    assert approval.message == "write_file src/app.py in workspace default"
    cases = [({"type": "training.completed", "job_id": "ft_1", "model": "me/model-ft"}, "jobs",
              "Job ft_1: me/model-ft"),
             ({"type": "training.failed", "job_id": "ft_2", "error": {"message": "OOM"}}, "jobs", "Job ft_2: OOM"),
             ({"type": "model.deployed", "model": "me/model-ft"}, "jobs", "me/model-ft is ready to use"),
             ({"type": "hosted.fallback", "fallback": "local/qwen"}, "hosted", "Using local/qwen instead"),
             ({"type": "hosted.recovered"}, "hosted", "Requests go to LLMTune again")]
    for event, kind, message in cases:
        found = notification_for(event)
        assert found is not None and (found.kind, found.message) == (kind, message)
    assert notification_for({"type": "tool.executed"}) is None
    assert notification_for({"type": "approval.resolved", "id": "apr_1"}) is None
