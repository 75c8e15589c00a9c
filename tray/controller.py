"""The tray's controller: follows the daemon through the control API and performs the menu's actions.

It waits without polling: on the event stream while a daemon runs (a blocking read; the daemon sends a
comment line every 15 s), and on the settings directory (inotify and the like, through watchfiles)
while none does, so a `serve` started anywhere is picked up as soon as it writes daemon.json. A
stream that breaks is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import watchfiles

from ..cli.client import daemon_url
from ..config.paths import Paths
from ..config.settings import ConfigError, TraySettings, load_config, read_settings
from .client import ControlClient, ControlError, read_control_token
from .desktop import Desktop
from .features import cli_commands, detect
from .model import (
    SETTINGS_RELOADED,
    Action,
    Features,
    Notification,
    Snapshot,
    TrayState,
    apply_event,
    daemon_stopped_notification,
    from_status,
    notification_for,
    snapshot,
    tooltip,
)

log = logging.getLogger(__name__)


class Backoff:
    """Exponential waits between reconnects: first, first*2, ... up to most."""

    def __init__(self, first: float = 0.25, most: float = 30.0) -> None:
        self.first = first
        self.most = most
        self.current = first

    def next(self) -> float:
        wait = self.current
        self.current = min(self.most, self.current * 2)
        return wait

    def reset(self) -> None:
        self.current = self.first


def _noop(*_: Any) -> None:
    return None


class Controller:
    def __init__(
        self,
        paths: Paths,
        *,
        desktop: Desktop | None = None,
        features: Features | None = None,
        on_snapshot: Callable[[Snapshot], None] = _noop,
        on_notify: Callable[[Notification], None] = _noop,
        on_quit: Callable[[], None] = _noop,
        backoff: Backoff | None = None,
        stop_grace: float = 3.0,
    ) -> None:
        self.paths = paths
        self.desktop = desktop or Desktop()
        self.features = features if features is not None else detect()
        self.on_snapshot = on_snapshot
        self.on_notify = on_notify
        self.on_quit = on_quit
        self.backoff = backoff or Backoff()
        # How long a vanished daemon may take to come back (a restart) before the person is told.
        self.stop_grace = stop_grace
        self.state = TrayState()
        self.settings = self._tray_settings(TraySettings())
        self._client: ControlClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Condition()
        self._expect_stop = False
        self._notified: set[str] = set()
        self._stop_watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- state --------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return snapshot(self.state, self.features)

    async def _set(self, state: TrayState) -> None:
        self.state = state
        self.on_snapshot(self.snapshot())
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[TrayState], bool]) -> TrayState:
        """Wait until the state satisfies `predicate` (tests and scripted use; bound it with asyncio.timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.state))
        return self.state

    def _tray_settings(self, fallback: TraySettings) -> TraySettings:
        try:
            return read_settings(self.paths.config_file).tray
        except ConfigError:
            return fallback  # the daemon reports the error; keep what worked

    def _notify(self, notification: Notification) -> None:
        if self.settings.allows(notification.kind):
            self.on_notify(notification)

    # -- following the daemon -----------------------------------------------------------------

    async def run(self) -> None:
        """Follow the daemon until cancelled: connect, stream events, reconnect."""
        async with aiohttp.ClientSession(trust_env=False) as session:
            self._session = session
            self.on_snapshot(self.snapshot())
            try:
                while True:
                    url = daemon_url(self.paths)
                    if url is None:
                        await self._wait_for_change(self.backoff.most)
                        continue
                    try:
                        await self._follow(session, url)
                    except ControlError as exc:
                        log.info("companion at %s: %s", url, exc)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        log.info("event stream from %s ended: %s", url, type(exc).__name__)
                    await self._lost()
                    await self._wait_for_change(self.backoff.next())
            finally:
                self._session = None
                for task in list(self._tasks):
                    task.cancel()

    async def _follow(self, session: aiohttp.ClientSession, url: str) -> None:
        client = ControlClient(session, url, read_control_token(self.paths))
        async with client.events() as events:
            # Subscribed first, then the status: the stream replays what is pending, so nothing is missed.
            status = await client.status()
            self._client = client
            self._expect_stop = False
            self.backoff.reset()
            self.settings = self._tray_settings(self.settings)
            await self._set(from_status(url, status, approvals=[], previous=self.state))
            async for event in events:
                await self._on_event(client, event)

    async def _on_event(self, client: ControlClient, event: dict[str, Any]) -> None:
        state = apply_event(self.state, event)
        if event.get("type") == SETTINGS_RELOADED:
            self.settings = self._tray_settings(self.settings)
            with contextlib.suppress(ControlError):
                state = from_status(client.url, await client.status(), previous=state)
            state = apply_event(state, event)
        await self._set(state)
        notification = notification_for(event)
        if notification is None:
            return
        if event.get("type") == "approval.pending":
            approval_id = str(event["approval"].get("id"))
            if approval_id in self._notified:
                return  # replayed after a reconnect: the person was told already
            self._notified = {item.id for item in self.state.approvals} | {approval_id}
        self._notify(notification)

    async def _lost(self) -> None:
        self._client = None
        if not self.state.running:
            return
        await self._set(TrayState())
        if not self._expect_stop and self._stop_watch is None:
            self._stop_watch = self._spawn(self._tell_if_still_stopped())

    async def _tell_if_still_stopped(self) -> None:
        try:
            await asyncio.sleep(self.stop_grace)
            if not self.state.running and not self._expect_stop:
                self._notify(daemon_stopped_notification())
        finally:
            self._stop_watch = None

    async def _wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until something changes in the settings directory (daemon.json appears), or `timeout` passes."""
        self.paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        stop = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                # watchfiles wakes every `step` ms to check its stop event: 2 Hz keeps an idle tray at ~0% CPU
                # and still sees a new daemon.json within half a second.
                async for _ in watchfiles.awatch(self.paths.root, stop_event=stop, recursive=False, debounce=100,
                                                 step=500):
                    if daemon_url(self.paths) is not None:
                        break
        stop.set()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- actions ------------------------------------------------------------------------------

    async def perform(self, action: Action) -> None:
        """Do what a menu item says; a failure becomes a notification (the menu has no other voice)."""
        handler = getattr(self, "_do_" + action.kind, None)
        if handler is None:
            raise ValueError(f"unknown tray action {action.kind!r}")
        try:
            await handler(*action.args)
        except ControlError as exc:
            self.on_notify(Notification("action", "LLMTune companion", str(exc)))

    def _need_client(self) -> ControlClient:
        if self._client is None:
            raise ControlError("the companion is not running")
        return self._client

    async def _do_allow(self, approval_id: str) -> None:
        await self._need_client().decide(approval_id, True)

    async def _do_allow_remember(self, approval_id: str) -> None:
        await self._need_client().decide(approval_id, True, remember=True)

    async def _do_deny(self, approval_id: str) -> None:
        await self._need_client().decide(approval_id, False, reason="denied from the tray")

    async def _do_set_tools(self, workspace: str, mode: str) -> None:
        await self._need_client().set_tools(workspace, mode)

    async def _do_open_dashboard(self, approval_id: str = "") -> None:
        url = await self._need_client().dashboard_link()
        await asyncio.to_thread(self.desktop.open_url, url)

    async def _do_show_status(self) -> None:
        self.on_notify(Notification("status", "LLMTune companion", tooltip(self.state).split("\n", 1)[-1]))

    async def _do_copy_base_url(self) -> None:
        if self.state.url:
            self._copied("base URL", self.desktop.copy(self.state.url + "/v1"))

    async def _do_copy_token(self, workspace: str) -> None:
        try:
            config = await asyncio.to_thread(load_config, self.paths)
        except ConfigError as exc:
            raise ControlError(f"cannot read the settings: {exc}") from None
        found = config.workspaces.get(workspace)
        if found is None:
            raise ControlError(f"no workspace named {workspace!r}")
        self._copied(f"local token of {workspace}", self.desktop.copy(found.token))

    def _copied(self, what: str, ok: bool) -> None:
        message = f"Copied the {what}" if ok else f"Cannot copy the {what}: no clipboard tool found"
        self.on_notify(Notification("action", "LLMTune companion", message))

    async def _do_view_logs(self) -> None:
        target = self.paths.log_file if self.paths.log_file.exists() else self.paths.log_dir
        target.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.desktop.open_path, target)

    async def _do_open_settings(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(self.desktop.open_path, self.paths.root)

    async def _run_cli(self, *args: str) -> bool:
        result = await self.desktop.run_cli(*args)
        self.on_notify(Notification("action", "LLMTune companion", result.message))
        return result.code == 0

    async def _do_connect_continue(self) -> None:
        await self._run_cli("connect", "continue")

    async def refresh_start_at_login(self) -> None:
        """Read `service status --json` into the Start at login check item."""
        if not self.features.service:
            return
        import orjson

        result = await self.desktop.run_cli("service", "status", "--json")
        enabled: bool | None = None
        # Its exit status says whether the service runs (3: not); the JSON says whether it is installed.
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            report = orjson.loads(result.out)
            enabled = bool(report.get("installed")) and bool(report.get("enabled", True))
        self.features = detect(start_at_login=enabled)
        await self._set(self.state)

    async def _do_toggle_start_at_login(self) -> None:
        if self.features.start_at_login:
            await self._run_cli("service", "uninstall")
        else:
            await self._run_cli("service", "install")
        await self.refresh_start_at_login()

    async def _do_stop(self) -> None:
        self._expect_stop = True
        if "stop" in cli_commands():
            if await self._run_cli("stop"):
                return
        client = self._need_client()
        try:
            await client.shutdown()
        except ControlError as exc:
            if exc.status not in (404, 405):
                raise
            self._terminate()  # a daemon without the shutdown route

    def _terminate(self) -> None:
        from ..server import read_daemon_file

        pid = (read_daemon_file(self.paths) or {}).get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    async def _do_start(self) -> None:
        self._expect_stop = False
        if self.features.service and self.features.start_at_login and "restart" in cli_commands():
            await self._run_cli("restart")  # through the installed service
            return
        await asyncio.to_thread(self.desktop.start_daemon, self.paths)

    async def _do_restart(self) -> None:
        self._expect_stop = True
        if "restart" in cli_commands():
            await self._run_cli("restart")
            return
        await self._do_stop()
        deadline = time.monotonic() + 15
        while daemon_url(self.paths) is not None and time.monotonic() < deadline:
            await self._wait_for_change(0.5)
        await self._do_start()

    async def _do_quit(self) -> None:
        self.on_quit()
