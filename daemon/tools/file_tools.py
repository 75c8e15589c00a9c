"""read_file, write_file, list_directory and search_replace inside a `Sandbox`.

Blocking file work: the executor runs these methods in a thread, off the event loop. Every write
keeps what it replaced in the undo journal first, and a write approved on a preview is refused if
the file changed since (`expect` is the previewed file's hash).
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import stat
from typing import TYPE_CHECKING, Any, Literal

from ..config.tool_limits import KIB, MIB, ToolLimits
from .definitions import LIST_DIRECTORY, READ_FILE, SEARCH_REPLACE, WRITE_FILE, ToolArgumentError, ToolCall
from .results import Preview, Refused, ToolResult
from .sandbox import O_NONBLOCK, PathChangedError, ResolvedPath, Sandbox

if TYPE_CHECKING:
    from .journal import Journal


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _human(size: int) -> str:
    if size < KIB:
        return f"{size} bytes"
    if size < MIB:
        return f"{size / KIB:.1f} KiB"
    return f"{size / MIB:.1f} MiB"


def _line_numbers(text: str, needle: str, limit: int = 5) -> list[int]:
    lines: list[int] = []
    start = 0
    while len(lines) < limit:
        index = text.find(needle, start)
        if index < 0:
            break
        lines.append(text.count("\n", 0, index) + 1)
        start = index + max(len(needle), 1)
    return lines


class FileTools:
    """The four file tools in one workspace root."""

    def __init__(self, sandbox: Sandbox, limits: ToolLimits, journal: Journal | None = None) -> None:
        self.sandbox = sandbox
        self.limits = limits
        self.journal = journal

    def run(self, call: ToolCall, workspace: str, expect: str | Literal[False] | None,
                   expect_path: str | None = None) -> ToolResult:
        target = self.sandbox.resolve(call.arguments["path"])
        if expect_path is not None and target.display != expect_path:
            raise PathChangedError(f"{target.requested!r} now leads to {target.display!r}, not {expect_path!r} "
                                   "as when it was checked; refused")
        if call.name == READ_FILE:
            return self._read_file(target)
        if call.name == LIST_DIRECTORY:
            return self._list_directory(target, call.arguments.get("depth"))
        if call.name == WRITE_FILE:
            return self._write_file(target, call.arguments["content"], workspace, expect)
        if call.name == SEARCH_REPLACE:
            args = call.arguments
            return self._search_replace(target, args["search"], args["replace"], bool(args.get("replace_all")),
                                        workspace, expect)
        raise ToolArgumentError(f"unknown tool {call.name!r}")

    def _read_existing(self, target: ResolvedPath, limit: int, what: str) -> tuple[bytes, os.stat_result] | None:
        """The bytes and status of a regular file, None if it does not exist; refused above `limit`."""
        try:
            fd = self.sandbox.open_file(target, os.O_RDONLY | O_NONBLOCK)
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise Refused(f"{target.display!r} is a directory; use list_directory") from exc
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise Refused(f"{target.display!r} is a directory; use list_directory")
            if not stat.S_ISREG(info.st_mode):
                raise Refused(f"{target.display!r} is not a regular file")
            if info.st_size > limit:
                raise Refused(
                    f"{target.display!r} is {_human(info.st_size)}, more than the {_human(limit)} {what} limit"
                    + ("; read part of it with run_terminal (head, sed -n, grep)" if what == "read" else ""),
                    size=info.st_size,
                )
            chunks: list[bytes] = []
            remaining = limit + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, MIB))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
            if len(data) > limit:  # grew since fstat
                raise Refused(f"{target.display!r} is more than the {_human(limit)} {what} limit")
            return data, info
        finally:
            os.close(fd)

    @staticmethod
    def _decode_text(target: ResolvedPath, data: bytes) -> str:
        if b"\x00" in data:
            raise Refused(f"{target.display!r} is a binary file (it contains NUL bytes); not read", binary=True)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(f"{target.display!r} is not UTF-8 text (binary or another encoding); not read",
                           binary=True) from exc

    def _read_file(self, target: ResolvedPath) -> ToolResult:
        found = self._read_existing(target, self.limits.max_read_bytes, "read")
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        data, _ = found
        text = self._decode_text(target, data)
        return ToolResult(text, ok=True, meta={"path": target.display, "bytes": len(data)})

    def _list_directory(self, target: ResolvedPath, depth: int | None) -> ToolResult:
        depth = depth or self.limits.list_default_depth
        info = self.sandbox.lstat(target)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        if not stat.S_ISDIR(info.st_mode):
            raise Refused(f"{target.display!r} is not a directory; use read_file")
        entries, truncated = self.sandbox.list_tree(target, depth=depth, max_entries=self.limits.list_max_entries)
        lines = []
        for entry in entries:
            if entry.kind == "dir":
                lines.append(entry.path + "/")
            elif entry.kind == "link":
                lines.append(f"{entry.path}@ -> {entry.target}" if entry.target else entry.path + "@")
            else:
                lines.append(entry.path)
        if not lines:
            lines.append("(empty directory)")
        if truncated:
            lines.append(f"[listing stopped at {self.limits.list_max_entries} entries; list a subdirectory "
                         "or use a smaller depth]")
        header = f"{target.display}/ (depth {depth}):" if not target.is_root else f"./ (depth {depth}):"
        return ToolResult("\n".join([header, *lines]), ok=True,
                          meta={"path": target.display, "entries": len(entries), "truncated": truncated})

    def _check_writable(self, target: ResolvedPath, data: bytes) -> None:
        if target.is_root:
            raise Refused("the workspace root is a directory, not a file")
        if len(data) > self.limits.max_write_bytes:
            raise Refused(f"the new content is {_human(len(data))}, more than the "
                           f"{_human(self.limits.max_write_bytes)} write limit", size=len(data))

    def _old(self, target: ResolvedPath, limit: int) -> tuple[bytes | None, int | None]:
        found = self._read_existing(target, limit, "backup")
        if found is None:
            return None, None
        data, info = found
        return data, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)

    def _check_expected(self, target: ResolvedPath, old: bytes | None, expect: str | Literal[False] | None) -> None:
        if expect is False:
            return
        now = None if old is None else sha256(old)
        if now != expect:
            raise Refused(f"{target.display!r} changed while the call was waiting for approval; "
                           "read it again and retry", conflict=True)

    def _commit(self, target: ResolvedPath, tool: str, old: bytes | None, mode: int | None, new: bytes,
                workspace: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": target.display, "bytes": len(new), "created": old is None}
        if old is not None:
            meta["previous_bytes"] = len(old)
        entry = None
        if self.journal is not None:
            entry = self.journal.record(workspace=workspace, root=self.sandbox.root, path=target.display, tool=tool,
                                        previous=old, mode=mode, after=new)
            meta["undo_id"] = entry.id
        try:
            self.sandbox.write_atomic(target, new, mode=mode)
        except BaseException:
            if self.journal is not None and entry is not None:
                self.journal.discard(entry.id)
            raise
        return meta

    def _write_file(self, target: ResolvedPath, content: str, workspace: str,
                    expect: str | Literal[False] | None) -> ToolResult:
        new = content.encode("utf-8")
        self._check_writable(target, new)
        old, mode = self._old(target, self.limits.max_backup_bytes)
        self._check_expected(target, old, expect)
        meta = self._commit(target, WRITE_FILE, old, mode, new, workspace)
        if old is None:
            message = f"Created {target.display} ({_human(len(new))})."
        elif old == new:
            message = f"{target.display} already had this content ({_human(len(new))}); rewritten unchanged."
        else:
            message = f"Wrote {target.display} ({_human(len(new))}, was {_human(len(old))})."
        return ToolResult(message, ok=True, meta=meta)

    def _diff(self, target: ResolvedPath, before: str, after: str) -> str:
        name = target.display
        lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                     fromfile=f"a/{name}", tofile=f"b/{name}", n=3)
        out: list[str] = []
        size = 0
        for line in lines:
            if not line.endswith("\n"):
                line += "\n\\ No newline at end of file\n"
            size += len(line)
            if size > self.limits.max_diff_bytes:
                out.append("[... diff cut ...]\n")
                break
            out.append(line)
        return "".join(out)

    def _replacement(self, target: ResolvedPath, text: str, search: str, replace: str,
                     replace_all: bool) -> tuple[str, int]:
        if search == "":
            raise Refused("search is empty; give the exact text to replace")
        if search == replace:
            raise Refused("search and replace are the same text; nothing to change")
        count = text.count(search)
        if count == 0 and "\r\n" in text and "\r\n" not in search and "\n" in search:
            # A file with Windows line endings, and the model's text with Unix ones.
            search, replace = search.replace("\n", "\r\n"), replace.replace("\n", "\r\n")
            count = text.count(search)
        if count == 0:
            hint = ""
            stripped = search.strip()
            if stripped and stripped != search and stripped in text:
                hint = " (it occurs with different leading/trailing whitespace; copy it exactly)"
            elif "\t" in text and "\t" not in search and search.startswith(" "):
                hint = " (the file indents with tabs)"
            raise Refused(f"the search text was not found in {target.display!r}{hint}; read the file and "
                           "copy the text exactly", matches=0)
        if count > 1 and not replace_all:
            lines = _line_numbers(text, search)
            raise Refused(
                f"the search text occurs {count} times in {target.display!r} (lines "
                f"{', '.join(map(str, lines))}{', ...' if count > len(lines) else ''}); include more "
                "surrounding lines to make it unique, or set replace_all to true",
                matches=count,
            )
        return text.replace(search, replace) if replace_all else text.replace(search, replace, 1), count

    def _search_replace(self, target: ResolvedPath, search: str, replace: str, replace_all: bool, workspace: str,
                        expect: str | Literal[False] | None) -> ToolResult:
        old, mode = self._old(target, self.limits.max_write_bytes)
        if old is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        self._check_expected(target, old, expect)
        text = self._decode_text(target, old)
        updated, count = self._replacement(target, text, search, replace, replace_all)
        new = updated.encode("utf-8")
        self._check_writable(target, new)
        meta = self._commit(target, SEARCH_REPLACE, old, mode, new, workspace)
        meta["replacements"] = count
        diff = self._diff(target, text, updated)
        plural = "s" if count > 1 else ""
        return ToolResult(f"Replaced {count} occurrence{plural} in {target.display}.\n{diff}", ok=True, meta=meta)

    def preview(self, call: ToolCall) -> Preview:
        target = self.sandbox.resolve(call.arguments["path"])
        meta: dict[str, Any] = {"path": target.display, "protected": target.protected}
        if call.name == READ_FILE:
            return Preview("read", target.display, meta)
        if call.name == LIST_DIRECTORY:
            return Preview("list", target.display, meta)
        if call.name == WRITE_FILE:
            new = call.arguments["content"].encode("utf-8")
            self._check_writable(target, new)
            old, _ = self._old(target, self.limits.max_backup_bytes)
            meta.update(before_sha256=None if old is None else sha256(old), bytes=len(new), created=old is None)
            try:
                before = "" if old is None else self._decode_text(target, old)
            except Refused:
                return Preview("diff", f"(replaces a binary file of {_human(len(old or b''))})\n", meta)
            return Preview("diff", self._diff(target, before, call.arguments["content"]), meta)
        old, _ = self._old(target, self.limits.max_write_bytes)
        if old is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        text = self._decode_text(target, old)
        args = call.arguments
        updated, count = self._replacement(target, text, args["search"], args["replace"],
                                           bool(args.get("replace_all")))
        self._check_writable(target, updated.encode("utf-8"))
        meta.update(before_sha256=sha256(old), replacements=count)
        return Preview("diff", self._diff(target, text, updated), meta)
