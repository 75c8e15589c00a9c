"""The thin pystray layer: draws the model's snapshot, hands menu choices to the controller.

pystray is imported lazily: without a display it raises an X error rather than ImportError, and the
command line must still work there. On Linux only the backends with menus (appindicator, gtk; both
need PyGObject) are used: the xorg backend shows no menu and ignores clicks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..config.paths import Paths
from .controller import Controller
from .desktop import Desktop
from .icon import draw
from .model import Action, IconState, Item, Notification, Snapshot

log = logging.getLogger(__name__)

BACKEND_ENV = "PYSTRAY_BACKEND"
LINUX_BACKENDS = ("appindicator", "gtk")
NAME = "llmtune-companion"


class TrayUnavailable(Exception):
    """No tray icon can be shown here; the message says why and what to install."""


def load_pystray() -> ModuleType:
    """pystray with a backend that has menus, or TrayUnavailable."""
    chosen = os.environ.get(BACKEND_ENV)
    candidates = [chosen] if chosen else list(LINUX_BACKENDS) if sys.platform.startswith("linux") else [None]
    reasons: list[str] = []
    for backend in candidates:
        if backend is not None:
            os.environ[BACKEND_ENV] = backend
        try:
            import pystray

            module: ModuleType = pystray
            return module
        except ModuleNotFoundError as exc:
            if exc.name == "pystray":
                raise TrayUnavailable("pystray is not installed: pip install 'llmtune-companion[tray]'") from None
            reasons.append(f"{backend or 'default'}: {exc}")
        except Exception as exc:  # no display: Xlib and GTK raise their own errors, not ImportError
            reasons.append(f"{backend or 'default'}: {exc}")
        finally:
            if not chosen:
                os.environ.pop(BACKEND_ENV, None)
        for name in [name for name in sys.modules if name == "pystray" or name.startswith("pystray.")]:
            del sys.modules[name]  # a failed import leaves half a package behind
    hint = ""
    if sys.platform.startswith("linux"):
        hint = (" A tray needs a graphical session (DISPLAY or WAYLAND_DISPLAY) with a system tray, and PyGObject "
                "with GTK 3 (Debian/Ubuntu: gir1.2-gtk-3.0 gir1.2-ayatanaappindicator3-0.1, then "
                "pip install 'llmtune-companion[tray]').")
    raise TrayUnavailable("no system tray can be shown here (" + "; ".join(reasons) + ")." + hint)


def to_pystray_menu(pystray: ModuleType, items: tuple[Item, ...], choose: Callable[[Action], None]) -> Any:
    """The model's menu as pystray's (built fresh for each snapshot: pystray menus are immutable)."""

    def entry(item: Item) -> Any:
        if item.separator:
            return pystray.Menu.SEPARATOR
        if item.submenu:
            return pystray.MenuItem(item.text, pystray.Menu(*(entry(child) for child in item.submenu)),
                                    enabled=item.enabled)
        action = item.action

        def chosen(icon: Any, menu_item: Any) -> None:
            if action is not None:
                choose(action)

        checked = None if item.checked is None else (lambda _item, value=item.checked: value)
        return pystray.MenuItem(item.text, chosen, checked=checked, radio=item.radio, default=item.default,
                                enabled=item.enabled and action is not None)

    return pystray.Menu(*(entry(item) for item in items))


class Notifier:
    """pystray's own notifications where the backend has them (D-Bus on Linux), else notify-send."""

    def __init__(self, icon: Any) -> None:
        self.icon = icon

    def __call__(self, notification: Notification) -> None:
        if getattr(self.icon, "HAS_NOTIFICATION", False):
            try:
                self.icon.notify(notification.message, notification.title)
                return
            except Exception as exc:  # no notification service on the bus
                log.info("pystray notification failed: %s", exc)
        command = shutil.which("notify-send")
        if command is None:
            log.info("notification (no notifier): %s: %s", notification.title, notification.message)
            return
        try:
            subprocess.run([command, "--app-name", NAME, notification.title, notification.message], timeout=5,
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("notify-send failed: %s", exc)


class GtkDesktop(Desktop):
    """The GTK clipboard when the backend runs GTK anyway: it needs no xclip and works on Wayland."""

    def copy(self, text: str) -> bool:
        try:
            import gi

            gi.require_version("Gtk", "3.0")
            gi.require_version("Gdk", "3.0")
            from gi.repository import Gdk, GLib, Gtk
        except (ImportError, ValueError):
            return super().copy(text)

        def put() -> bool:
            clipboard = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD)
            clipboard.set_text(text, -1)
            clipboard.store()
            return False

        GLib.idle_add(put)  # the GTK main loop owns the clipboard
        return True


class TrayApp:
    """The icon, its menu and the controller's event loop (on a thread of its own)."""

    def __init__(self, paths: Paths, pystray: ModuleType) -> None:
        self.pystray = pystray
        backend = pystray.Icon.__module__
        desktop: Desktop = Desktop()
        if backend.endswith(("_gtk", "_appindicator")):
            desktop = GtkDesktop()
            from gi.repository import GLib

            GLib.set_prgname(NAME)  # names the menu windows (else "__main__.py")
            GLib.set_application_name("LLMTune companion")
        self.icon = pystray.Icon(NAME, icon=draw(IconState.STOPPED), title="LLMTune companion")
        self.loop = asyncio.new_event_loop()
        self.controller = Controller(paths, desktop=desktop, on_snapshot=self.show, on_notify=Notifier(self.icon),
                                     on_quit=self.quit)
        self._thread = threading.Thread(target=self._run_loop, name="tray-controller", daemon=True)
        self._last: Snapshot | None = None

    def choose(self, action: Action) -> None:
        """Called on the toolkit's thread: the controller's loop performs the action."""
        asyncio.run_coroutine_threadsafe(self.controller.perform(action), self.loop)

    def show(self, snap: Snapshot) -> None:
        """Called on the controller's thread; pystray's setters hand the work to the toolkit's loop."""
        if self._last is not None and snap == self._last:
            return
        count = sum(len(item.submenu) for item in snap.menu if item.text.startswith("Approvals ("))
        self.icon.icon = draw(snap.icon, count)
        self.icon.title = snap.tooltip
        self.icon.menu = to_pystray_menu(self.pystray, snap.menu, self.choose)
        self._last = snap

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        main = self.loop.create_task(self._main())
        try:
            self.loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    async def _main(self) -> None:
        await asyncio.gather(self.controller.run(), self.controller.refresh_start_at_login())

    def _setup(self, icon: Any) -> None:
        icon.visible = True
        self._thread.start()

    def quit(self) -> None:
        """Called on the controller's loop (the Quit action): end it, then the toolkit's."""
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.icon.stop()

    def run(self) -> int:
        """Block in the toolkit's main loop until Quit."""
        self.show(self.controller.snapshot())
        self.icon.run(setup=self._setup)
        return 0
