"""The undo journal: what every tool write replaced, kept in `<settings dir>/undo/` so it can be put back.

Before write_file or search_replace replaces a file, the executor records the old bytes and mode
(or that the file did not exist) with an id, the time, the workspace, its root and the path. `undo`
restores the latest entry (or a named one) byte for byte, with its mode, or removes a file the tool
created. It refuses when the path now leads outside the root, or when the file changed since the
tool wrote it (a later edit would be lost) unless forced.

Each entry is two private files: `<id>.json` (metadata, written last) and `<id>.bin` (old content).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from ..config.paths import Paths, write_private
from .sandbox import O_NONBLOCK, ResolvedPath, Sandbox, SandboxError

UNDO_DIR_NAME = "undo"
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9]{9}-[0-9a-f]{6}$")


def undo_dir(paths: Paths) -> Path:
    return paths.root / UNDO_DIR_NAME


class UndoError(Exception):
    """An undo that cannot (or should not) be done; the message says why."""


@dataclass(frozen=True, slots=True)
class UndoEntry:
    id: str
    time: float
    workspace: str
    root: str
    path: str  # relative to root, '/'-separated
    tool: str
    existed: bool  # False: the tool created the file, undo removes it
    mode: int | None  # permission bits of the old file
    size: int  # bytes of the old content
    after_sha256: str | None  # what the tool left (None: it deleted the file)
    undone_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UndoEntry:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, 1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


class Journal:
    """Undo entries in one directory; safe to use from several threads of one process."""

    def __init__(self, directory: str | os.PathLike[str], *, max_entries: int = 500,
                 companion_dir: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.companion_dir = companion_dir
        self._lock = threading.RLock()
        self._last_ns = 0

    @classmethod
    def for_paths(cls, paths: Paths, *, max_entries: int = 500) -> Journal:
        """The journal in `<settings dir>/undo/`; the settings directory itself is never restored into."""
        return cls(undo_dir(paths), max_entries=max_entries, companion_dir=paths.root)

    # ---- recording --------------------------------------------------------------------------------

    def _new_id(self) -> tuple[str, float]:
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        seconds, nanos = divmod(now, 1_000_000_000)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
        return f"{stamp}-{nanos:09d}-{secrets.token_hex(3)}", now / 1e9

    def record(self, *, workspace: str, root: str | os.PathLike[str], path: str, tool: str,
               previous: bytes | None, mode: int | None, after: bytes | None) -> UndoEntry:
        """Save what is about to be replaced (`previous`, None if the file does not exist yet).

        `after` is what the tool will leave (None for a deletion); undo checks the file still has it.
        """
        with self._lock:
            entry_id, when = self._new_id()
            entry = UndoEntry(
                id=entry_id,
                time=when,
                workspace=workspace,
                root=str(root),
                path=path,
                tool=tool,
                existed=previous is not None,
                mode=mode,
                size=len(previous or b""),
                after_sha256=None if after is None else hashlib.sha256(after).hexdigest(),
            )
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if previous is not None:
                write_private(self._blob(entry_id), previous)
            write_private(self._meta(entry_id), orjson.dumps(entry.to_dict()))
            self._prune()
            return entry

    def discard(self, entry_id: str) -> None:
        """Forget an entry (its write did not happen)."""
        if not _ID.match(entry_id):
            return
        with self._lock:
            for path in (self._meta(entry_id), self._blob(entry_id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _meta(self, entry_id: str) -> Path:
        return self.directory / f"{entry_id}.json"

    def _blob(self, entry_id: str) -> Path:
        return self.directory / f"{entry_id}.bin"

    def _prune(self) -> None:
        entries = self._load_all()
        for entry in entries[self.max_entries:]:
            for path in (self._meta(entry.id), self._blob(entry.id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ---- reading ----------------------------------------------------------------------------------

    def _load_all(self) -> list[UndoEntry]:
        """Every entry, newest first."""
        if not self.directory.is_dir():
            return []
        entries = []
        for path in self.directory.glob("*.json"):
            if not _ID.match(path.stem):
                continue
            try:
                entries.append(UndoEntry.from_dict(orjson.loads(path.read_bytes())))
            except (OSError, orjson.JSONDecodeError, TypeError):
                continue
        entries.sort(key=lambda entry: entry.id, reverse=True)
        return entries

    def list(self, workspace: str | None = None, *, include_undone: bool = False,
             limit: int | None = None) -> list[UndoEntry]:
        """Entries newest first, for one workspace or all; undone entries only when asked."""
        with self._lock:
            entries = [
                entry for entry in self._load_all()
                if (workspace is None or entry.workspace == workspace)
                and (include_undone or entry.undone_at is None)
            ]
        return entries[:limit] if limit is not None else entries

    def get(self, entry_id: str) -> UndoEntry:
        if not _ID.match(entry_id):
            raise UndoError(f"{entry_id!r} is not an undo id")
        try:
            return UndoEntry.from_dict(orjson.loads(self._meta(entry_id).read_bytes()))
        except FileNotFoundError as exc:
            raise UndoError(f"no undo entry {entry_id!r}") from exc
        except (OSError, orjson.JSONDecodeError, TypeError) as exc:
            raise UndoError(f"undo entry {entry_id!r} cannot be read") from exc

    def content(self, entry_id: str) -> bytes | None:
        """The saved old content of an entry (None when the file did not exist before)."""
        entry = self.get(entry_id)
        if not entry.existed:
            return None
        try:
            return self._blob(entry_id).read_bytes()
        except FileNotFoundError as exc:
            raise UndoError(f"the saved content of {entry_id!r} is missing") from exc

    # ---- undoing ----------------------------------------------------------------------------------

    async def undo(self, entry_id: str | None = None, *, workspace: str | None = None,
                   force: bool = False) -> UndoEntry:
        """Restore entry `entry_id`, or the latest not yet undone (of `workspace` if given)."""
        return await asyncio.to_thread(self.restore, entry_id, workspace=workspace, force=force)

    def restore(self, entry_id: str | None = None, *, workspace: str | None = None,
                force: bool = False) -> UndoEntry:
        """The blocking form of `undo`; returns the entry, marked undone. Raises `UndoError`."""
        with self._lock:
            if entry_id is None:
                entries = self.list(workspace)
                if not entries:
                    raise UndoError("nothing to undo" + (f" in workspace {workspace!r}" if workspace else ""))
                entry = entries[0]
            else:
                entry = self.get(entry_id)
                if workspace is not None and entry.workspace != workspace:
                    raise UndoError(f"undo entry {entry_id!r} belongs to workspace {entry.workspace!r}")
            if entry.undone_at is not None:
                raise UndoError(f"{entry.id} ({entry.path}) was already undone")
            old = self.content(entry.id)
            sandbox, target = self._target(entry)
            current = self._current_hash(sandbox, target)
            if not force and current != entry.after_sha256:
                state = "was removed" if current is None else "was changed"
                raise UndoError(f"{entry.path} {state} since {entry.tool} wrote it; undoing would lose that "
                                "change (force to undo anyway)")
            if old is not None:
                sandbox.write_atomic(target, old, mode=entry.mode)
            else:
                sandbox.unlink(target)
            done = replace(entry, undone_at=time.time())
            write_private(self._meta(entry.id), orjson.dumps(done.to_dict()))
            return done

    def _target(self, entry: UndoEntry) -> tuple[Sandbox, ResolvedPath]:
        try:
            sandbox = Sandbox(entry.root, companion_dir=self.companion_dir)
        except ValueError as exc:
            raise UndoError(f"cannot undo {entry.path}: the workspace root {entry.root} no longer exists") from exc
        try:
            target = sandbox.resolve(entry.path)
        except SandboxError as exc:
            raise UndoError(f"cannot undo {entry.path}: {exc}") from exc
        if target.display != entry.path:
            raise UndoError(f"cannot undo {entry.path}: it now leads to {target.display} (a symbolic link)")
        if target.protected == "companion":
            raise UndoError(f"cannot undo {entry.path}: it is inside the companion's settings directory")
        return sandbox, target

    @staticmethod
    def _current_hash(sandbox: Sandbox, target: ResolvedPath) -> str | None:
        try:
            fd = sandbox.open_file(target, os.O_RDONLY | O_NONBLOCK)
        except FileNotFoundError:
            return None
        except SandboxError as exc:
            raise UndoError(f"cannot undo {target.display}: {exc}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UndoError(f"cannot undo {target.display}: it is no longer a regular file")
            return _hash_fd(fd)
        finally:
            os.close(fd)
