"""The tray's pure model: the daemon's status and events in, the icon's state, tooltip and menu out.

Nothing here talks to the network or a screen, so every rule (which colour, which entries, which
notification) is tested without either. The menu is a tree of `Item`s whose `Action`s the controller
performs; tray/shell.py turns it into pystray's menu.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

TOOL_MODES = ("passthrough", "gate", "execute")

APPROVAL_PENDING = "approval.pending"
APPROVAL_RESOLVED = "approval.resolved"
SETTINGS_RELOADED = "settings.reloaded"
HOSTED_FALLBACK = "hosted.fallback"
HOSTED_RECOVERED = "hosted.recovered"
TRAINING_COMPLETED = "training.completed"
TRAINING_FAILED = "training.failed"
MODEL_DEPLOYED = "model.deployed"


class IconState(StrEnum):
    RUNNING = "running"  # green
    APPROVALS = "approvals"  # amber: something waits for the person
    ERROR = "error"  # red: settings invalid, or the hosted API unreachable
    STOPPED = "stopped"  # grey


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    workspace: str
    tool: str
    target: str  # the path or command, as the person recognises the call
    created_at: float = 0.0
    expires_at: float = 0.0

    @property
    def label(self) -> str:
        target = f" {shorten(self.target, 48)}" if self.target else ""
        return f"{self.tool}{target} · {self.workspace}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Approval:
        target = ""
        for source in (_mapping(data.get("arguments")), _mapping(data.get("preview"))):
            for key in ("path", "command"):
                value = source.get(key)
                if isinstance(value, str) and value and not target:
                    target = value
        return cls(id=str(data.get("id", "")), workspace=str(data.get("workspace", "")),
                   tool=str(data.get("tool", "")), target=" ".join(target.split()),
                   created_at=float(data.get("created_at") or 0.0), expires_at=float(data.get("expires_at") or 0.0))


@dataclass(frozen=True, slots=True)
class WorkspaceView:
    name: str
    tools: str = "passthrough"
    has_root: bool = False


@dataclass(frozen=True, slots=True)
class TrayState:
    """Everything the tray shows; all of it comes from the daemon (status and events)."""

    running: bool = False
    url: str | None = None
    models: int | None = None
    config_error: str | None = None
    fallback: str | None = None  # the model used while the hosted API is unreachable
    workspaces: tuple[WorkspaceView, ...] = ()
    approvals: tuple[Approval, ...] = ()

    @property
    def host_port(self) -> str:
        url = self.url or ""
        return url.split("://", 1)[-1].rstrip("/")


@dataclass(frozen=True, slots=True)
class Action:
    """What choosing a menu item does; performed by the controller."""

    kind: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Item:
    text: str
    action: Action | None = None
    enabled: bool = True
    checked: bool | None = None  # None: not a check item
    radio: bool = False
    default: bool = False  # the action of a click on the icon; shown bold
    submenu: tuple[Item, ...] = ()

    @property
    def separator(self) -> bool:
        return self.text == SEPARATOR_TEXT


SEPARATOR_TEXT = "-"
SEPARATOR = Item(SEPARATOR_TEXT, enabled=False)


@dataclass(frozen=True, slots=True)
class Features:
    """Which later commands exist in this installation (their menu items appear only then)."""

    dashboard: bool = False
    service: bool = False
    connect: bool = False
    start_at_login: bool | None = None  # None: unknown (no service command, or its status failed)


@dataclass(frozen=True, slots=True)
class Notification:
    kind: str  # "approvals", "jobs", "hosted" or "daemon": each can be turned off in [tray]
    title: str
    message: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the shell draws: derived from the state in one go."""

    icon: IconState
    tooltip: str
    menu: tuple[Item, ...] = field(default_factory=tuple)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def count_models(status: Mapping[str, Any]) -> int | None:
    rows = status.get("model_cache")
    if not isinstance(rows, list) or not rows:
        return None  # nothing listed yet: no count rather than a wrong "0 models"
    return sum(int(row.get("models") or 0) for row in rows if isinstance(row, dict))


def from_status(url: str, status: Mapping[str, Any], approvals: list[dict[str, Any]] | None = None,
                previous: TrayState | None = None) -> TrayState:
    """The state of a running daemon from `GET /companion/v1/status` (and its pending approvals)."""
    config = _mapping(status.get("config"))
    workspaces = tuple(
        WorkspaceView(name=str(ws.get("name")), tools=str(ws.get("tools") or "passthrough"),
                      has_root=bool(ws.get("root")))
        for ws in status.get("workspaces") or [] if isinstance(ws, dict)
    )
    kept = previous.approvals if previous is not None and previous.running else ()
    if approvals is not None:
        kept = tuple(Approval.from_dict(item) for item in approvals)
    return TrayState(running=True, url=url, models=count_models(status),
                     config_error=None if config.get("valid", True) else str(config.get("error") or "unknown"),
                     fallback=previous.fallback if previous is not None and previous.running else None,
                     workspaces=workspaces, approvals=kept)


def apply_event(state: TrayState, event: Mapping[str, Any]) -> TrayState:
    """The state after one event from `/companion/v1/events`."""
    kind = event.get("type")
    if kind == APPROVAL_PENDING and isinstance(event.get("approval"), dict):
        approval = Approval.from_dict(event["approval"])
        if any(item.id == approval.id for item in state.approvals):
            return state
        return replace(state, approvals=(*state.approvals, approval))
    if kind == APPROVAL_RESOLVED:
        return replace(state, approvals=tuple(item for item in state.approvals if item.id != event.get("id")))
    if kind == HOSTED_FALLBACK:
        return replace(state, fallback=str(event.get("fallback") or "a fallback model"))
    if kind == HOSTED_RECOVERED:
        return replace(state, fallback=None)
    if kind == SETTINGS_RELOADED:
        error = event.get("error")
        return replace(state, config_error=None if event.get("valid", True) else str(error or "unknown"))
    return state


def icon_state(state: TrayState) -> IconState:
    if not state.running:
        return IconState.STOPPED
    if state.approvals:
        return IconState.APPROVALS
    if state.config_error or state.fallback:
        return IconState.ERROR
    return IconState.RUNNING


def status_line(state: TrayState) -> str:
    if not state.running:
        return "Stopped"
    if state.config_error:
        return "Settings invalid: " + shorten(state.config_error, 80)
    if state.fallback:
        return f"Hosted API unreachable, using {state.fallback}"
    parts = ["Running", state.host_port]
    if state.models is not None:
        parts.append(f"{state.models} model{'' if state.models == 1 else 's'}")
    return " · ".join(parts)


def tooltip(state: TrayState) -> str:
    lines = ["LLMTune companion", status_line(state)]
    if state.approvals:
        count = len(state.approvals)
        lines.append(f"{count} tool call{'' if count == 1 else 's'} waiting for approval")
    return "\n".join(lines)


def _approval_items(state: TrayState, features: Features) -> tuple[Item, ...]:
    if not state.approvals:
        return ()
    entries = []
    for approval in state.approvals:
        choices = [
            Item("Allow", Action("allow", (approval.id,))),
            Item("Allow and remember", Action("allow_remember", (approval.id,))),
            Item("Deny", Action("deny", (approval.id,))),
        ]
        if features.dashboard:
            choices.append(Item("Open in dashboard", Action("open_dashboard", (approval.id,))))
        entries.append(Item(approval.label, submenu=tuple(choices)))
    return (Item(f"Approvals ({len(state.approvals)})", submenu=tuple(entries)), SEPARATOR)


def _workspace_items(state: TrayState) -> tuple[Item, ...]:
    items: list[Item] = []
    for workspace in state.workspaces:
        modes = tuple(
            Item(mode, Action("set_tools", (workspace.name, mode)), checked=workspace.tools == mode, radio=True,
                 # Gate and execute run tools in the workspace's root, so they need one.
                 enabled=mode == "passthrough" or workspace.has_root)
            for mode in TOOL_MODES
        )
        items.append(Item(f"Tools: {workspace.name}", submenu=modes))
    return tuple(items)


def build_menu(state: TrayState, features: Features) -> tuple[Item, ...]:
    """The menu for this state; items needing a later command appear once it exists."""
    items: list[Item] = [Item(status_line(state), enabled=False), SEPARATOR]
    items.extend(_approval_items(state, features))
    if features.dashboard:
        items.append(Item("Open dashboard", Action("open_dashboard"), default=True, enabled=state.running))
    else:
        items.append(Item("Show status", Action("show_status"), default=True))
    if state.running:
        items.append(Item("Copy base URL", Action("copy_base_url")))
        names = [ws.name for ws in state.workspaces] or ["default"]
        if len(names) == 1:
            items.append(Item("Copy token", Action("copy_token", (names[0],))))
        else:
            items.append(Item("Copy token", submenu=tuple(Item(name, Action("copy_token", (name,)))
                                                          for name in names)))
        items.extend(_workspace_items(state))
    if features.connect:
        items.append(Item("Connect IDE", submenu=(Item("Continue", Action("connect_continue")),)))
    if features.service and features.start_at_login is not None:
        items.append(Item("Start at login", Action("toggle_start_at_login"), checked=features.start_at_login))
    items.append(SEPARATOR)
    items.extend([Item("View logs", Action("view_logs")), Item("Open settings folder", Action("open_settings"))])
    if state.running:
        items.extend([Item("Restart companion", Action("restart")), Item("Stop companion", Action("stop"))])
    else:
        items.append(Item("Start companion", Action("start")))
    items.extend([SEPARATOR, Item("Quit", Action("quit"))])
    return tuple(items)


def snapshot(state: TrayState, features: Features) -> Snapshot:
    return Snapshot(icon_state(state), tooltip(state), build_menu(state, features))


def notification_for(event: Mapping[str, Any]) -> Notification | None:
    """The desktop notification an event deserves, if any."""
    kind = event.get("type")
    if kind == APPROVAL_PENDING and isinstance(event.get("approval"), dict):
        approval = Approval.from_dict(event["approval"])
        target = f" {shorten(approval.target, 80)}" if approval.target else ""
        return Notification("approvals", "Tool call waiting for approval",
                            f"{approval.tool}{target} in workspace {approval.workspace}")
    if kind == TRAINING_COMPLETED:
        model = f": {event['model']}" if event.get("model") else ""
        return Notification("jobs", "Fine-tune completed", f"Job {event.get('job_id')}{model}")
    if kind == TRAINING_FAILED:
        error = event.get("error")
        reason = error.get("message") if isinstance(error, dict) else error
        detail = f": {reason}" if reason else ""
        return Notification("jobs", "Fine-tune failed", f"Job {event.get('job_id')}{detail}")
    if kind == MODEL_DEPLOYED:
        return Notification("jobs", "Model deployed", f"{event.get('model')} is ready to use")
    if kind == HOSTED_FALLBACK:
        return Notification("hosted", "Hosted API unreachable",
                            f"Using {event.get('fallback') or 'a fallback model'} instead")
    if kind == HOSTED_RECOVERED:
        return Notification("hosted", "Hosted API back", "Requests go to LLMTune again")
    return None


def daemon_stopped_notification() -> Notification:
    return Notification("daemon", "LLMTune companion stopped",
                        "The companion stopped unexpectedly; choose Start companion in the tray menu")
