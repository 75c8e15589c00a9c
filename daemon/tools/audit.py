"""The tool audit log: one JSON line per tool call, in `<settings dir>/logs/tools-audit.jsonl`.

Each line: time, workspace, tool, the model's call id, the arguments (long strings such as file
contents cut to ~200 characters), the decision and who made it, whether it succeeded, the result
size and the duration. Keys and tokens never reach it: every string is passed through the same
redaction as the daemon's log, and `NAME=value` assignments of secret-looking variables are masked.
The file is private (0600) and rotated at `max_bytes` (one previous file kept, `.1`).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..config.paths import Paths
from ..logs import redact

AUDIT_FILE_NAME = "tools-audit.jsonl"
ARGUMENT_LIMIT = 200

# `OPENAI_API_KEY=abc`, `"api_key": "abc"`, `token: abc` and `--password hunter2` in commands and contents.
_SECRET_WORD = r"[A-Za-z0-9_.-]*(?:key|token|secret|password|passwd|credential)[A-Za-z0-9_.-]*"  # noqa: S105
_VALUE = r"(?:'[^']*'|\"[^\"]*\"|[^\s'\",;]+)"
_ASSIGNED_SECRET = re.compile(rf"(?i)(\b{_SECRET_WORD}['\"]?\s*[=:]\s*){_VALUE}")
_FLAG_SECRET = re.compile(rf"(?i)(--?{_SECRET_WORD}\s+){_VALUE}")


def audit_file(paths: Paths) -> Path:
    return paths.log_dir / AUDIT_FILE_NAME


def scrub(text: str) -> str:
    """`text` without keys, tokens, bearer headers or values assigned to secret-looking names."""
    text = redact(text)
    for pattern in (_ASSIGNED_SECRET, _FLAG_SECRET):
        text = pattern.sub(lambda m: m.group(0) if "[redacted]" in m.group(0) else f"{m.group(1)}[redacted]", text)
    return text


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text)} chars]"


def summarise_arguments(arguments: Mapping[str, Any], limit: int = ARGUMENT_LIMIT, *,
                        secret_free: bool = True) -> dict[str, Any]:
    """Arguments for display or logging: strings cut to `limit` characters (and scrubbed)."""
    result: dict[str, Any] = {}
    for name, value in arguments.items():
        if isinstance(value, str):
            if secret_free:
                value = scrub(value)
            result[name] = _cut(value, limit)
        elif isinstance(value, bool | int | float) or value is None:
            result[name] = value
        else:
            text = orjson.dumps(value, default=str).decode()
            result[name] = _cut(scrub(text) if secret_free else text, limit)
    return result


class AuditLog:
    """Append-only JSON lines; one `os.write` per record on an O_APPEND descriptor."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 10 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    @classmethod
    def for_paths(cls, paths: Paths, **kwargs: Any) -> AuditLog:
        return cls(audit_file(paths), **kwargs)

    def record(
        self,
        *,
        workspace: str,
        tool: str,
        arguments: Mapping[str, Any],
        decision: str,
        decided_by: str,
        ok: bool,
        result_bytes: int,
        duration_ms: float,
        call_id: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        approval_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one line; returns what was written. `decision`: allow / deny; `decided_by`: policy,
        default, user:NAME, timeout, sandbox ..."""
        now = time.time()
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "workspace": workspace,
            "tool": tool,
            "call_id": call_id,
            "arguments": summarise_arguments(arguments),
            "decision": decision,
            "decided_by": scrub(decided_by),
            "rule": rule,
            "reason": _cut(scrub(reason), ARGUMENT_LIMIT) if reason else None,
            "approval_id": approval_id,
            "ok": ok,
            "result_bytes": result_bytes,
            "duration_ms": round(duration_ms, 1),
        }
        if extra:
            entry.update(summarise_arguments(extra))
        line = orjson.dumps(entry) + b"\n"
        with self._lock:
            self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return entry

    def _rotate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if self.path.stat().st_size >= self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass

    def tail(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` records, oldest first (for a control API or the CLI)."""
        try:
            with self.path.open("rb") as handle:
                lines = deque(handle, maxlen=limit)
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return records
