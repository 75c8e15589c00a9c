"""A real Secret Service for a test: gnome-keyring-daemon on a private D-Bus session bus.

`dbus-run-session` gives the test a session bus of its own; gnome-keyring-daemon is unlocked with a
password on its standard input (as PAM does at login), in a private HOME. Stopping the session bus
ends the keyring daemon too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.system import require_executable

SESSION = """printf '%s' "$1" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
printf '%s' "$DBUS_SESSION_BUS_ADDRESS" > "$2.tmp" && mv "$2.tmp" "$2"
exec sleep 600
"""


def base_environment(home: Path, runtime: Path) -> dict[str, str]:
    """The outer environment without anything that points at a desktop session or another keychain."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "DBUS_", "LLMTUNE_", "GNOME_KEYRING")) and k != "PYTHON_KEYRING_BACKEND"}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    return env


@contextlib.contextmanager
def secret_service(base: Path) -> Iterator[dict[str, str]]:
    """Yields an environment whose programs find the running, unlocked Secret Service."""
    require_executable("dbus-run-session")
    require_executable("gnome-keyring-daemon")
    home, runtime = base / "keyring-home", base / "keyring-run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    address_file = base / "bus-address"
    env = base_environment(home, runtime)
    process = subprocess.Popen(["dbus-run-session", "--", "sh", "-c", SESSION, "sh", "test-password",
                                str(address_file)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not address_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr and process.poll() is not None else ""
                raise AssertionError(f"the Secret Service did not start: {error}")
            time.sleep(0.05)
        env["DBUS_SESSION_BUS_ADDRESS"] = address_file.read_text()
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        if process.stderr:
            process.stderr.close()
