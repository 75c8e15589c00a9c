"""Confinement of every path a tool touches to one workspace root.

Two steps, so that a check cannot be raced:

1. `Sandbox.resolve(path)` resolves the path the model gave (relative to the root, or absolute
   inside it) with `realpath` and refuses `..` escapes, absolute paths elsewhere and symbolic links
   that lead out. Symbolic links that stay inside the root are followed.
2. Every use then walks the *resolved* path from a file descriptor of the root, one component at a
   time, with `O_NOFOLLOW | O_DIRECTORY` (`openat` through `dir_fd`), and opens the final component
   `O_NOFOLLOW`. The resolved path contains no symbolic links, so if one appears anywhere between
   the check and the use (a file or a directory swapped for a link to /etc), the open fails and the
   call is refused with `PathChangedError`. Writes go to a temporary file in the same directory fd
   and are renamed over the final name, which replaces a link rather than following it.

Where the platform has no `dir_fd` support (Windows), the same operations open by full path and
verify the opened file against the resolved path afterwards.

Protected paths (`.git/`, `.env*`, the companion's own settings directory) are flagged on the
`ResolvedPath` for the policy to ask about (or refuse); the sandbox itself does not refuse them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Literal

O_NOFOLLOW: Final[int] = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY: Final[int] = getattr(os, "O_DIRECTORY", 0)
O_CLOEXEC: Final[int] = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK: Final[int] = getattr(os, "O_NONBLOCK", 0)
O_NOCTTY: Final[int] = getattr(os, "O_NOCTTY", 0)
O_BINARY: Final[int] = getattr(os, "O_BINARY", 0)

HAVE_DIR_FD: Final[bool] = (
    sys.platform != "win32"
    and O_NOFOLLOW != 0
    and O_DIRECTORY != 0
    and {os.open, os.mkdir, os.rename, os.unlink, os.stat, os.readlink} <= os.supports_dir_fd
    and os.scandir in os.supports_fd
)

_DIR_FLAGS: Final = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
_LINK_ERRNOS: Final = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})

Protection = Literal["companion", "git", "env"]
PROTECTION_TEXT: Final[dict[str, str]] = {
    "companion": "the companion's own settings directory",
    "git": "the .git directory",
    "env": "an environment file (.env*)",
}

SKIPPED_NAMES: Final = frozenset({".git"})


class SandboxError(Exception):
    """A path the tools refuse to touch; the message is written for the model."""


class PathChangedError(SandboxError):
    """A symbolic link appeared in a checked path between the check and the use."""


@dataclass(frozen=True, slots=True)
class ResolvedPath:
    """A path checked to be inside the root. `rel` is symlink-free and relative to the root."""

    requested: str
    real: Path
    rel: PurePosixPath
    # The path as written (normalised, relative to the root), for deny rules on what the model asked.
    lexical_rel: PurePosixPath
    protected: Protection | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        return () if self.rel == PurePosixPath(".") else self.rel.parts

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else ""

    @property
    def is_root(self) -> bool:
        return not self.parts

    @property
    def display(self) -> str:
        return self.rel.as_posix()

    @property
    def protection_text(self) -> str | None:
        return PROTECTION_TEXT[self.protected] if self.protected else None


@dataclass(frozen=True, slots=True)
class DirEntry:
    path: str  # relative to the listed directory, '/'-separated
    kind: Literal["dir", "file", "link", "other"]
    size: int | None = None
    target: str | None = None  # where a symbolic link points (it is never followed)


def _changed(requested: str) -> PathChangedError:
    return PathChangedError(
        f"{requested!r} changed while it was being accessed (a symbolic link appeared in the path); refused"
    )


def _norm(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))


class Sandbox:
    """Everything a tool does to the file system goes through one of these, bound to one root."""

    def __init__(self, root: str | os.PathLike[str], *, companion_dir: str | os.PathLike[str] | None = None
                 ) -> None:
        given = os.path.abspath(os.fspath(root))
        real = os.path.realpath(given)
        if not os.path.isdir(real):
            raise ValueError(f"workspace root {given!r} is not a directory")
        self.root = Path(real)
        self._roots = tuple(dict.fromkeys((_norm(real), _norm(given))))
        self.companion_dir: Path | None = (
            Path(os.path.realpath(os.path.abspath(os.fspath(companion_dir)))) if companion_dir else None
        )

    def __repr__(self) -> str:
        return f"Sandbox(root={str(self.root)!r})"

    # ---- checking -------------------------------------------------------------------------------

    @staticmethod
    def _within(path: str, root: str) -> bool:
        path = _norm(path)
        if path == root:
            return True
        prefix = root if root.endswith(os.sep) else root + os.sep
        return path.startswith(prefix)

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Whether a real (symlink-resolved) path is the root or below it."""
        return self._within(os.fspath(path), self._roots[0])

    def _lexical_rel(self, lexical: str) -> PurePosixPath | None:
        for root in self._roots:
            if self._within(lexical, root):
                rel = os.path.relpath(_norm(lexical), root)
                return PurePosixPath(*Path(rel).parts) if rel != "." else PurePosixPath(".")
        return None

    def resolve(self, path: str) -> ResolvedPath:
        """Check `path` (relative to the root, or absolute inside it); raise `SandboxError` if it escapes."""
        if not isinstance(path, str) or not path:
            raise SandboxError("the path is empty; give a path relative to the workspace root")
        if "\x00" in path:
            raise SandboxError("the path contains a NUL character")
        if path.startswith("~"):
            raise SandboxError(f"{path!r}: '~' is not expanded here; give a path relative to the workspace root")
        candidate = path if os.path.isabs(path) else os.path.join(self.root, path)
        lexical_rel = self._lexical_rel(os.path.normpath(candidate))
        if lexical_rel is None:
            if os.path.isabs(path):
                raise SandboxError(f"{path!r} is outside the workspace; give a path relative to the workspace root")
            raise SandboxError(f"{path!r} leads outside the workspace ('..' cannot climb above its root)")
        real = os.path.realpath(candidate)
        if not self.contains(real):
            raise SandboxError(f"{path!r} goes through a symbolic link that leads outside the workspace; refused")
        rel_text = os.path.relpath(real, self.root)
        rel = PurePosixPath(*Path(rel_text).parts) if rel_text != "." else PurePosixPath(".")
        return ResolvedPath(
            requested=path,
            real=Path(real),
            rel=rel,
            lexical_rel=lexical_rel,
            protected=self._protection(Path(real), rel, lexical_rel),
        )

    def _protection(self, real: Path, rel: PurePosixPath, lexical: PurePosixPath) -> Protection | None:
        if self.companion_dir is not None and (real == self.companion_dir or real.is_relative_to(self.companion_dir)):
            return "companion"
        names = [part.lower() for part in (*rel.parts, *lexical.parts)]
        if ".git" in names:
            return "git"
        if any(name.startswith(".env") for name in names):
            return "env"
        return None

    def is_companion_path(self, rel: str) -> bool:
        return self.companion_dir is not None and self._protection(
            self.root / rel, PurePosixPath(rel), PurePosixPath(rel)) == "companion"

    # ---- using: every open walks the resolved path with O_NOFOLLOW --------------------------------

    def _open_root(self) -> int:
        return os.open(self.root, _DIR_FLAGS)

    def _step(self, parent_fd: int, name: str, requested: str, *, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent_fd)
            return self._step(parent_fd, name, requested, create=False)
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise _changed(requested) from exc
                raise NotADirectoryError(errno.ENOTDIR, f"{name!r} is not a directory") from exc
            raise

    def _walk(self, parts: Sequence[str], requested: str, *, create: bool = False) -> int:
        fd = self._open_root()
        try:
            for part in parts:
                next_fd = self._step(fd, part, requested, create=create)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _verify(self, fd: int, target: ResolvedPath) -> None:
        """Fallback check (no dir_fd): the opened file must be the one the resolved path names."""
        real = os.path.realpath(target.real)
        if not self.contains(real) or not os.path.samestat(os.fstat(fd), os.stat(target.real, follow_symlinks=False)):
            raise _changed(target.requested)

    def _open_verified(self, target: ResolvedPath, flags: int, mode: int = 0o666) -> int:
        """Open `target.real` by path (no dir_fd support) and check it is still what was resolved."""
        fd = os.open(target.real, flags, mode)
        try:
            self._verify(fd, target)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_dir(self, target: ResolvedPath, *, create: bool = False) -> int:
        """A directory fd for `target` (created with its parents when `create`)."""
        if HAVE_DIR_FD:
            return self._walk(target.parts, target.requested, create=create)
        if create:
            os.makedirs(target.real, exist_ok=True)
        return self._open_verified(target, os.O_RDONLY | O_BINARY)

    @contextlib.contextmanager
    def parent(self, target: ResolvedPath, *, create: bool = False) -> Iterator[int]:
        """The fd of the directory holding `target` (for `dir_fd=` calls on `target.name`)."""
        if target.is_root:
            raise IsADirectoryError(errno.EISDIR, "the workspace root is a directory")
        if not HAVE_DIR_FD:
            raise NotImplementedError("parent() needs dir_fd support")
        fd = self._walk(target.parts[:-1], target.requested, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    def open_file(self, target: ResolvedPath, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """Open the final component with O_NOFOLLOW from its parent's fd; `PathChangedError` on a link."""
        flags |= O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_BINARY
        if not HAVE_DIR_FD:
            return self._open_verified(target, flags & ~O_NOFOLLOW, mode)
        with self.parent(target) as dir_fd:
            try:
                return os.open(target.name, flags, mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    raise _changed(target.requested) from exc
                raise

    def lstat(self, target: ResolvedPath) -> os.stat_result | None:
        """The final component's own status (a link is not followed), or None when it does not exist."""
        try:
            if target.is_root:
                return os.stat(self.root)
            if not HAVE_DIR_FD:
                return os.stat(target.real, follow_symlinks=False)
            with self.parent(target) as dir_fd:
                return os.stat(target.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def write_atomic(self, target: ResolvedPath, data: bytes, *, mode: int | None = None,
                     create_parents: bool = True) -> None:
        """Write through a temporary file in the same directory: write, fsync, rename over the name.

        `mode` sets the permission bits (an existing file's, to preserve them); None leaves the
        creation default (0666 less the umask).
        """
        if not HAVE_DIR_FD:
            self._write_atomic_by_path(target, data, mode=mode, create_parents=create_parents)
            return
        with self.parent(target, create=create_parents) as dir_fd:
            name = target.name
            tmp = f".{name[:200]}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o666,
                         dir_fd=dir_fd)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if mode is not None:
                        os.fchmod(fd, mode)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
            with contextlib.suppress(OSError):
                os.fsync(dir_fd)

    def _write_atomic_by_path(self, target: ResolvedPath, data: bytes, *, mode: int | None,
                              create_parents: bool) -> None:
        folder = target.real.parent
        if create_parents:
            folder.mkdir(parents=True, exist_ok=True)
        if not self.contains(os.path.realpath(folder)):
            raise _changed(target.requested)
        tmp = folder / f".{target.name[:200]}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target.real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def unlink(self, target: ResolvedPath) -> bool:
        """Remove a file (or a link, never what it points to); False when it did not exist."""
        try:
            if not HAVE_DIR_FD:
                if not self.contains(os.path.realpath(target.real.parent)):
                    raise _changed(target.requested)
                os.unlink(target.real)
                return True
            with self.parent(target) as dir_fd:
                os.unlink(target.name, dir_fd=dir_fd)
                with contextlib.suppress(OSError):
                    os.fsync(dir_fd)
            return True
        except FileNotFoundError:
            return False

    def list_tree(self, target: ResolvedPath, *, depth: int, max_entries: int) -> tuple[list[DirEntry], bool]:
        """Entries below `target`, breadth first (so the top levels survive the limit), sorted by path.

        Links are listed, not followed; `.git` and the companion's settings directory are skipped.
        Returns (entries, truncated).
        """
        entries: list[DirEntry] = []
        # (fd or path, prefix relative to target, level)
        queue: deque[tuple[int | str, str, int]] = deque()
        root_handle: int | str = self.open_dir(target) if HAVE_DIR_FD else str(target.real)
        queue.append((root_handle, "", 1))
        truncated = False
        try:
            while queue:
                handle, prefix, level = queue.popleft()
                try:
                    with os.scandir(handle) as iterator:
                        items = sorted(iterator, key=lambda item: item.name)
                    for item in items:
                        if item.name.lower() in SKIPPED_NAMES:
                            continue
                        rel = f"{prefix}{item.name}"
                        if self.is_companion_path((target.rel / rel).as_posix()):
                            continue
                        if len(entries) >= max_entries:
                            truncated = True
                            break
                        entry = self._entry(item, rel, handle)
                        entries.append(entry)
                        if entry.kind == "dir" and level < depth:
                            queue.append((self._child(handle, item.name, target), rel + "/", level + 1))
                finally:
                    if isinstance(handle, int):
                        os.close(handle)
                if truncated:
                    break
        finally:
            for handle, _, _ in queue:
                if isinstance(handle, int):
                    os.close(handle)
        entries.sort(key=lambda entry: entry.path)
        return entries, truncated

    def _child(self, handle: int | str, name: str, target: ResolvedPath) -> int | str:
        if isinstance(handle, int):
            return self._step(handle, name, target.requested, create=False)
        return os.path.join(handle, name)

    @staticmethod
    def _entry(item: os.DirEntry[str], rel: str, handle: int | str) -> DirEntry:
        info = item.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            try:
                link = os.readlink(item.name, dir_fd=handle) if isinstance(handle, int) else os.readlink(item.path)
            except OSError:
                link = None
            return DirEntry(rel, "link", target=link)
        if stat.S_ISDIR(info.st_mode):
            return DirEntry(rel, "dir")
        if stat.S_ISREG(info.st_mode):
            return DirEntry(rel, "file", size=info.st_size)
        return DirEntry(rel, "other")
