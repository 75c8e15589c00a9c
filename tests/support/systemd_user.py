"""A real systemd user manager for a test, walled off from the machine it runs on.

`systemd --user` refuses to start unless /run/systemd/system exists (the mark of a systemd-booted
machine), and a manager sitting in the root cgroup moves every process of the machine into its own
init.scope. So the manager gets namespaces of its own: a private mount namespace where a tmpfs on
/run/systemd holds that mark (the machine's /run is never written), and a cgroup namespace rooted at
a fresh child cgroup, where it sees a cgroup2 tree of its own and moves only itself. HOME and
XDG_RUNTIME_DIR are private too. This needs root; it runs in CI (CI=true) or when
LLMTUNE_TEST_SYSTEMD=1 opts in, and everything it made is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.system import in_ci, missing, require_executable

OPT_IN = "LLMTUNE_TEST_SYSTEMD"
MANAGERS = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")

# Runs inside the new namespaces: the mark on a private tmpfs, a cgroup2 view rooted at our cgroup.
INNER = """set -e
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; else mount -t tmpfs tmpfs /run; fi
mkdir -p /run/systemd/system
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec "$0" --user
"""
# Moves itself into the fresh cgroup first, so the cgroup namespace is rooted there.
OUTER = 'echo $$ > "$1/cgroup.procs" && exec unshare -m -C --propagation private sh -c "$2" "$3"'


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _own_cgroup2() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _remove_cgroup(path: Path, timeout: float = 15.0) -> None:
    """Kill what is left in the cgroup tree, then remove it, deepest first."""
    if (path / "cgroup.kill").exists():
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while path.exists():
        for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            path.rmdir()
        if time.monotonic() > deadline:
            raise AssertionError(f"cgroup {path} could not be removed")
        time.sleep(0.1)


def _environment(home: Path, runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "DBUS_", "LLMTUNE_")) and k not in ("HOME", "NOTIFY_SOCKET")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    return env


@contextlib.contextmanager
def user_manager() -> Iterator[dict[str, str]]:
    """Start `systemd --user`; yields the environment (HOME, XDG_RUNTIME_DIR) that reaches it."""
    if not in_ci() and os.environ.get(OPT_IN) != "1":
        pytest.skip(f"starts a real systemd user manager in its own namespaces: set {OPT_IN}=1 (CI runs it)")
    manager = next((path for path in MANAGERS if os.access(path, os.X_OK)), None)
    if manager is None:
        missing("systemd is not installed (the Debian package systemd)")
    require_executable("systemctl")
    require_executable("unshare")
    if os.geteuid() != 0:
        missing("a systemd user manager in its own mount and cgroup namespaces needs root")
    mount = _cgroup2_mount()
    if mount is None:
        missing("no cgroup2 hierarchy is mounted")
        raise AssertionError("unreachable")
    base = Path(tempfile.mkdtemp(prefix="llmtune-sd-"))  # short: the manager's socket path has a length limit
    home, runtime = base / "home", base / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    cgroup = mount / _own_cgroup2().lstrip("/") / f"llmtune-test-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    env = _environment(home, runtime)
    log = (base / "manager.log").open("wb")
    process = subprocess.Popen(["sh", "-c", OUTER, "sh", str(cgroup), INNER, manager], env=env,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(["systemctl", "--user", "show", "--property=Version", "--value"], env=env,
                                   capture_output=True, text=True, timeout=30, check=False)
            if ready.returncode == 0 and ready.stdout.strip():
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"systemd --user did not start: {(base / 'manager.log').read_text()}"
                                     f"{ready.stderr}")
            time.sleep(0.2)
        yield env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the manager stops its units and exits
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        _remove_cgroup(cgroup)
        shutil.rmtree(base, ignore_errors=True)
