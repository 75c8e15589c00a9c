"""One daemon per settings directory: an OS file lock held for the daemon's whole life.

Two daemons on one directory would overwrite each other's daemon.json and both poll the same
fine-tune jobs. The lock (flock on POSIX, msvcrt on Windows) is released by the OS when the process
ends, however it ends, so a crashed daemon never leaves a stale lock behind.
"""

from __future__ import annotations

import sys
from typing import IO

import orjson

from .config.paths import Paths


def read_daemon_file(paths: Paths) -> dict[str, object] | None:
    """daemon.json: where the running daemon listens (pid, url; no secrets)."""
    try:
        data = orjson.loads(paths.daemon_file.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class AlreadyRunning(Exception):
    """Another process holds the settings directory's lock."""

    def __init__(self, paths: Paths, pid: int | None, url: str | None) -> None:
        who = f"llmtune-companion (pid {pid})" if pid else "another llmtune-companion"
        where = f" at {url}" if url else ""
        super().__init__(
            f"{who} is already serving this settings directory ({paths.root}){where}; "
            "stop it with `llmtune-companion stop`, or set LLMTUNE_COMPANION_HOME to another directory"
        )
        self.pid = pid
        self.url = url


def _try_lock(handle: IO[bytes]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class InstanceLock:
    """`acquire()` or AlreadyRunning; `release()` when the daemon stops (the OS does it on a crash)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._handle: IO[bytes] | None = None

    def acquire(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(self.paths.lock_file, "a+b")  # held open while the daemon runs
        if not _try_lock(handle):
            handle.close()
            info = read_daemon_file(self.paths) or {}
            pid, url = info.get("pid"), info.get("url")
            raise AlreadyRunning(self.paths, pid if isinstance(pid, int) else None,
                                 url if isinstance(url, str) else None)
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the lock
            self._handle = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_running(paths: Paths) -> bool:
    """Whether some process holds the directory's lock (a daemon is serving it), without taking it for long."""
    if not paths.lock_file.exists():
        return False
    with open(paths.lock_file, "a+b") as handle:
        if _try_lock(handle):
            return False  # nobody held it; closing the file releases our probe at once
    return True
