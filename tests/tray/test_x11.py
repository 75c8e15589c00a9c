"""A real tray on a real X server: Xvfb, trayer as the tray host, a D-Bus session, dunst, all started here.

`llmtune-companion tray` runs as a subprocess against a real `serve` subprocess (the hosted stand-in
behind it scripts a tool call). The icon must dock in trayer, turn amber when the call waits, a
notification must reach dunst, a right click must open the menu, and choosing Allow in it (driven by
xdotool) must let the held call run. A screenshot of the open menu is kept with the test's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace
from PIL import Image

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.support.system import missing, require_executable, require_module

# Where the screenshot of the open menu is copied, so it outlives pytest's temporary directories.
SCREENSHOT_COPY = Path(tempfile.gettempdir()) / "llmtune-companion-tray" / "tray-menu.png"
TIMEOUT = 30.0
GREEN, AMBER = (46, 160, 67), (245, 166, 35)
PROGRAMS = ("Xvfb", "trayer", "dbus-run-session", "dunst", "dunstctl", "xdotool", "xwininfo", "import")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Retry `check` until it returns something truthy (it may be a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Desktop:
    """The X server, tray host, session bus and notification daemon one test runs against."""

    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, *argv: str, **options: Any) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, **options)
        log.close()
        self.processes.append(process)
        return process

    def run(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=True).stdout

    def query(self, *argv: str) -> str:
        """An X query that may race a window going away (then: nothing)."""
        try:
            return self.run(*argv)
        except subprocess.CalledProcessError:
            return ""

    def screenshot(self, path: Path) -> Image.Image:
        self.run("import", "-window", "root", str(path))
        return Image.open(path).convert("RGB")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def desktop(tmp_path: Path) -> Any:
    for program in PROGRAMS:
        require_executable(program)
    if importlib.util.find_spec("pystray") is None:  # importing it needs the display started below
        missing("Python module 'pystray' is not installed (pip install -e '.[test]')")
    gi = require_module("gi")
    gi.require_version("Gtk", "3.0")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DBUS_", "XDG_", "WAYLAND"))}
    env.pop("DISPLAY", None)
    # Keys stay in secrets.json, as in every other test: a keychain on this session bus would prompt on screen.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    env["HOME"] = str(tmp_path / "user")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "runtime")
    os.makedirs(env["HOME"])
    os.makedirs(env["XDG_RUNTIME_DIR"], mode=0o700)
    session = Desktop(env, logs)
    try:
        # A free display number: Xvfb picks it and writes it to the pipe.
        read, write = os.pipe()
        session.start("xvfb", "Xvfb", "-displayfd", str(write), "-screen", "0", "1280x720x24", "-nolisten", "tcp",
                      pass_fds=(write,))
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            number = pipe.readline().strip().decode()
        assert number.isdigit(), "Xvfb did not say its display"
        env["DISPLAY"] = f":{number}"
        # The session bus lives as long as its child, `cat`, which ends at teardown when its stdin closes.
        bus = subprocess.Popen(["dbus-run-session", "--", "sh", "-c", 'echo "$DBUS_SESSION_BUS_ADDRESS"; exec cat'],
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        assert bus.stdout is not None
        env["DBUS_SESSION_BUS_ADDRESS"] = bus.stdout.readline().decode().strip()
        assert env["DBUS_SESSION_BUS_ADDRESS"], "dbus-run-session gave no address"
        session.start("trayer", "trayer", "--edge", "top", "--align", "left", "--widthtype", "pixel", "--width",
                      "160", "--height", "32", "--transparent", "false", "--tint", "0x333333", "--SetDockType",
                      "true")
        session.start("dunst", "dunst", "-verbosity", "info")
        yield session
    finally:
        session.stop()
        if "bus" in locals():
            assert bus.stdin is not None
            bus.stdin.close()
            try:
                bus.wait(10)
            except subprocess.TimeoutExpired:
                bus.kill()


@dataclass
class Served:
    url: str
    token: str
    project: Path


@pytest.fixture
async def served(desktop: Desktop, standin: StandIn, tmp_path: Path) -> AsyncIterator[Served]:
    """A real `serve` subprocess in execute mode, its hosted API the stand-in."""
    home = Paths(tmp_path / "companion-home")
    project = tmp_path / "project"
    project.mkdir()
    home.ensure()
    home.config_file.write_text(f'[workspaces.default]\nroot = "{project}"\ntools = "execute"\n')
    add_workspace(home, "default", WORKSPACE_KEY)
    desktop.env.update(LLMTUNE_COMPANION_HOME=str(home.root), LLMTUNE_BASE_URL=standin.url)
    process = desktop.start("serve", sys.executable, "-m", "llmtune_companion", "serve", "--port", str(free_port()))
    info = await eventually(lambda: home.daemon_file.exists() and orjson.loads(home.daemon_file.read_bytes()),
                            "serve to write daemon.json")
    try:
        yield Served(info["url"], load_config(home, desktop.env).workspaces["default"].token, project)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 15)


@dataclass
class Window:
    id: str
    x: int
    y: int
    width: int
    height: int

    @property
    def centre(self) -> tuple[int, int]:
        return self.x + self.width // 2, self.y + self.height // 2


def docked_icon(desktop: Desktop) -> Window | None:
    """Our icon's window when it sits inside trayer's panel (xwininfo -root -tree shows the nesting)."""
    tree = desktop.query("xwininfo", "-root", "-tree")
    panel = re.search(r'^(\s*)0x[0-9a-f]+ "panel": \("panel" "trayer"\)', tree, re.M)
    if panel is None:
        return None
    depth = len(panel.group(1))
    for match in re.finditer(r'^(\s*)(0x[0-9a-f]+) "LLMTune companion.*?:\s*\(.*?\)\s+(\d+)x(\d+)\+-?\d+\+-?\d+\s+'
                             r'\+(-?\d+)\+(-?\d+)', tree[panel.end():], re.M | re.S):
        if len(match.group(1)) > depth:
            width, height, x, y = (int(match.group(n)) for n in (3, 4, 5, 6))
            return Window(match.group(2), x, y, width, height)
    return None


def popups(desktop: Desktop) -> list[Window]:
    """Mapped top-level windows on screen (GTK's menus among them), by id."""
    tree = desktop.query("xwininfo", "-root", "-children")
    found = []
    for match in re.finditer(r'^\s+(0x[0-9a-f]+) .*?\s(\d+)x(\d+)\+(-?\d+)\+(-?\d+)\s+\+-?\d+\+-?\d+\s*$', tree, re.M):
        width, height, x, y = (int(match.group(n)) for n in range(2, 6))
        window = Window(match.group(1), x, y, width, height)
        if window.width > 40 and window.height > 20 and window.x >= 0 and window.y >= 0:
            if "Map State: IsViewable" in desktop.query("xwininfo", "-id", window.id):
                found.append(window)
    return found


def shows(image: Image.Image, icon: Window, colour: tuple[int, int, int]) -> bool:
    """Whether the icon's disc shows `colour`: enough pixels of it in and around the icon's window."""
    box = (max(0, icon.x - 16), max(0, icon.y - 4), icon.x + icon.width + 16, icon.y + icon.height + 4)
    raw = image.crop(box).convert("RGB").tobytes()
    pixels = [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]
    return sum(1 for pixel in pixels if all(abs(a - e) <= 24 for a, e in zip(pixel, colour, strict=False))) >= 30


def dunst_history(desktop: Desktop) -> list[str]:
    """Every notification dunst has shown (closed first, so the ones on screen count too)."""
    desktop.run("dunstctl", "close-all")
    history = orjson.loads(desktop.run("dunstctl", "history"))
    return [f"{item['summary']['data']}: {item['body']['data']}" for group in history["data"] for item in group]


async def test_real_tray_docks_notifies_and_allows_from_its_menu(
        desktop: Desktop, served: Served, standin: StandIn, tmp_path: Path) -> None:
    try:
        await drive_the_tray(desktop, served, standin, tmp_path)
    except BaseException:
        # What the screen showed and what the tray said, for a failure in CI.
        failure = SCREENSHOT_COPY.with_name("tray-failure.png")
        with contextlib.suppress(Exception):
            shutil.copyfile(tmp_path / "failure.png", failure) if desktop.screenshot(tmp_path / "failure.png") else None
            print(f"\nscreen at the failure: {failure}\n{(desktop.logs / 'tray.log').read_text()[-3000:]}")
        raise


async def drive_the_tray(desktop: Desktop, served: Served, standin: StandIn, tmp_path: Path) -> None:
    tray = desktop.start("tray", sys.executable, "-m", "llmtune_companion", "tray")
    icon = await eventually(lambda: tray.poll() is None and docked_icon(desktop), "the icon to dock in trayer")
    image = desktop.screenshot(tmp_path / "docked.png")
    await eventually(lambda: shows(desktop.screenshot(tmp_path / "docked.png"), icon, GREEN),
                     "a green icon (running)")
    assert not shows(desktop.screenshot(tmp_path / "docked.png"), icon, AMBER)

    # A tool call the daemon holds for approval.
    standin.api.script_tool_call("run_terminal", {"command": "echo from-the-tray > tray.txt"})
    body = {"model": "meta-llama/Llama-3.3-70B-Instruct", "messages": [{"role": "user", "content": "run it"}]}

    async def chat() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.post(
                served.url + "/v1/chat/completions", json=body,
                headers={"Authorization": f"Bearer {served.token}"}) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())

    reply = asyncio.create_task(chat())
    await eventually(lambda: shows(desktop.screenshot(tmp_path / "waiting.png"), icon, AMBER),
                     "an amber icon (an approval waits)")
    shown = await eventually(lambda: [n for n in dunst_history(desktop) if n.startswith("Tool call waiting")],
                             "dunst to show the approval notification")
    assert shown == ["Tool call waiting for approval: run_terminal echo from-the-tray > tray.txt in workspace default"]

    # Right click: the menu opens. Keyboard into Approvals (1) > the entry, so the whole chain is on screen.
    before = {window.id for window in popups(desktop)}
    icon = docked_icon(desktop) or icon  # GTK may have resized it since it docked
    desktop.run("xdotool", "mousemove", str(icon.centre[0]), str(icon.centre[1]), "click", "3")
    # Off the icon, so no tooltip window turns up among the menus.
    desktop.run("xdotool", "mousemove", "1270", "710")

    def cascaded_right_of(menu: Window | None) -> list[Window]:
        """New windows right of `menu` (a submenu cascades there), or the tallest new one (the menu itself)."""
        new = [w for w in popups(desktop) if w.id not in before]
        if menu is None:
            return sorted(new, key=lambda w: w.height)[-1:] if any(w.height > 200 for w in new) else []
        return [w for w in new if w.x >= menu.x + menu.width - 8]

    [menu] = await eventually(lambda: cascaded_right_of(None), "the menu to open")
    desktop.run("xdotool", "key", "Down")  # the first enabled item: Approvals (1)
    for what in ("Approvals (1)", "the approval's entry"):
        desktop.run("xdotool", "key", "Right")  # open it: its submenu appears with its first item selected
        [menu] = await eventually(lambda menu=menu: cascaded_right_of(menu), f"the submenu of {what} to open")
    innermost = menu
    screenshot = tmp_path / "tray-menu.png"
    desktop.screenshot(screenshot)
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"\nscreenshot of the open tray menu: {SCREENSHOT_COPY} (also {screenshot})")
    assert not (served.project / "tray.txt").exists()

    # Click Allow: the first item of the innermost submenu.
    # GTK acts on a click once it has seen the pointer over the item, so move, let it settle, then click;
    # a click it still dropped leaves the menu open and is given again.
    desktop.run("xdotool", "mousemove", str(innermost.x + 30), str(innermost.y + 16))
    for _ in range(3):
        await asyncio.sleep(0.5)
        desktop.run("xdotool", "click", "1")
        with contextlib.suppress(AssertionError):
            await eventually(lambda: innermost.id not in {w.id for w in popups(desktop)}, "the menu to close", 3)
            break
    answer = await asyncio.wait_for(reply, TIMEOUT)
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert (served.project / "tray.txt").read_text() == "from-the-tray\n"
    await eventually(lambda: shows(desktop.screenshot(tmp_path / "after.png"), icon, GREEN),
                     "the icon back to green")
    assert tray.poll() is None, (desktop.logs / "tray.log").read_text()
    assert image.size == (1280, 720)

    # Quit, the menu's last item: the tray ends cleanly and the companion keeps running.
    before = {window.id for window in popups(desktop)}
    desktop.run("xdotool", "mousemove", str(icon.centre[0]), str(icon.centre[1]), "click", "3")
    desktop.run("xdotool", "mousemove", "1270", "710")
    await eventually(lambda: cascaded_right_of(None), "the menu to open again")
    desktop.run("xdotool", "key", "Up")  # from no selection, Up selects the last item
    await asyncio.sleep(0.3)
    desktop.run("xdotool", "key", "Return")
    assert await asyncio.to_thread(tray.wait, TIMEOUT) == 0
    assert not docked_icon(desktop)
    async with aiohttp.ClientSession() as session, session.get(served.url + "/healthz") as response:
        assert response.status == 200
    log = (desktop.logs / "tray.log").read_text()
    assert "Traceback" not in log, log
