"""Recent requests for the dashboard: a bounded in-memory ring plus a small SQLite file that survives a restart.

The relay adds one `RequestRecord` per request (through `RequestLog.record`, where the request log
line is made). Adding is a deque append and a list append; the records reach SQLite in batches on a
worker thread, so the relay path pays nothing it would notice. Nothing of a prompt or an answer is kept
unless `[history] store_content = true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite3"
# Longest prompt text kept per request when store_content is on.
CONTENT_LIMIT = 2000
# The answer's usage object sits near its end; only this much is searched.
USAGE_WINDOW = 400

_USAGE_KEY = b'"usage"'
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    time REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    workspace TEXT NOT NULL,
    model TEXT,
    backend TEXT,
    status INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    fallback_from TEXT,
    content TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
"""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    time: float
    method: str
    path: str
    workspace: str
    model: str | None
    backend: str | None
    status: int
    duration_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fallback_from: str | None = None
    content: str | None = None  # the prompt's last message, only with store_content

    def line(self) -> str:
        """The request log's line (repr of the model: a client's newline cannot forge a line)."""
        return (f"{self.method} {self.path} model={self.model!r} backend={self.backend} status={self.status} "
                f"{self.duration_ms:.1f}ms")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(RequestRecord))


def usage_from_bytes(data: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from the end of an OpenAI answer or stream; (None, None) when absent."""
    at = data.rfind(_USAGE_KEY)
    if at < 0:
        return None, None
    window = data[at : at + USAGE_WINDOW]
    prompt = _PROMPT_TOKENS.search(window)
    completion = _COMPLETION_TOKENS.search(window)
    return (int(prompt.group(1)) if prompt else None, int(completion.group(1)) if completion else None)


def prompt_text(payload: dict[str, Any] | None) -> str | None:
    """The last message's text of a chat request, or a completion's prompt, cut to CONTENT_LIMIT."""
    if not payload:
        return None
    text: Any = None
    messages = payload.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        text = messages[-1].get("content")
        if isinstance(text, list):
            text = " ".join(str(part.get("text", "")) for part in text if isinstance(part, dict))
    elif "prompt" in payload:
        text = payload["prompt"]
    if not isinstance(text, str):
        return None
    return text[:CONTENT_LIMIT]


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    workspace: str | None = None
    model: str | None = None
    backend: str | None = None
    status: str | None = None  # "ok" (< 400), "error" (>= 400) or a number

    def matches(self, record: RequestRecord) -> bool:
        if self.workspace and record.workspace != self.workspace:
            return False
        if self.model and self.model.lower() not in (record.model or "").lower():
            return False
        if self.backend and record.backend != self.backend:
            return False
        if self.status == "ok":
            return record.status < 400
        if self.status == "error":
            return record.status >= 400
        if self.status:
            return str(record.status) == self.status
        return True


class History:
    """The ring and the store. Belongs to one event loop; SQLite is only touched on worker threads."""

    def __init__(self, path: Path | None, *, ring_size: int = 2000, store_content: bool = False,
                 retention_days: float = 30.0, max_rows: int = 200_000, flush_interval: float = 1.0) -> None:
        self.path = path
        self.store_content = store_content
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.flush_interval = flush_interval
        self.ring: deque[RequestRecord] = deque(maxlen=ring_size)
        self._pending: list[RequestRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        self._rows = 0  # rows in the store, counted once at open and then kept up to date
        self._pruned_at = 0.0
        self.error: str | None = None

    # -- the relay's side ---------------------------------------------------------------------

    def add(self, record: RequestRecord) -> None:
        if record.content is not None and not self.store_content:
            record = _without_content(record)
        self.ring.append(record)
        if self.path is None:
            return
        self._pending.append(record)
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: written at the next flush
                self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self._schedule_flush)

    def _schedule_flush(self) -> None:
        self._timer = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self.flush())

    # -- the store ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the store and fill the ring from it."""
        if self.path is None:
            return
        try:
            rows = await asyncio.to_thread(self._open_sync)
        except sqlite3.Error as exc:
            self.error = f"{self.path.name}: {exc}"
            log.warning("request history is kept in memory only: %s", self.error)
            self.path = None
            return
        self.ring.extend(rows)

    def _open_sync(self) -> list[RequestRecord]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.touch(mode=0o600, exist_ok=True)
        with self._lock:
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
            db.executescript(SCHEMA)
            self._db = db
            self._prune(db)
            limit = self.ring.maxlen or 0
            cursor = db.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY time DESC LIMIT ?",  # noqa: S608
                                (limit,))
            return [RequestRecord(*row) for row in reversed(cursor.fetchall())]

    async def flush(self) -> None:
        """Write what is pending (on a worker thread)."""
        batch, self._pending = self._pending, []
        if batch and self._db is not None:
            try:
                await asyncio.to_thread(self._write, batch)
            except sqlite3.Error as exc:
                self.error = f"{self.path.name if self.path else 'history'}: {exc}"
                log.warning("cannot write request history: %s", exc)

    def _write(self, batch: Iterable[RequestRecord]) -> None:
        with self._lock:
            db = self._db
            if db is None:
                return
            marks = ", ".join("?" for _ in COLUMNS)
            rows = [tuple(getattr(r, name) for name in COLUMNS) for r in batch]
            db.executemany(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({marks})", rows)  # noqa: S608
            db.commit()
            self._rows += len(rows)
            if self._rows > self.max_rows or time.time() - self._pruned_at > 3600:
                self._prune(db)

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop what is older than the retention, then the oldest rows beyond max_rows (under the lock)."""
        db.execute("DELETE FROM requests WHERE time < ?", (time.time() - self.retention_days * 86400,))
        count = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        if count > self.max_rows:
            db.execute("DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests ORDER BY time LIMIT ?)",
                       (count - self.max_rows,))
            count = self.max_rows
        db.commit()
        self._rows = count
        self._pruned_at = time.time()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        await self.flush()
        if self._db is not None:
            await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- reading -----------------------------------------------------------------------------------

    def recent(self, where: HistoryFilter | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest matching requests first, from the ring."""
        where = where or HistoryFilter()
        found: list[dict[str, Any]] = []
        for record in reversed(self.ring):
            if where.matches(record):
                found.append(record.to_dict())
                if len(found) >= limit:
                    break
        return found

    async def stats(self, now: float | None = None, *, minutes: int = 60, days: int = 14) -> dict[str, Any]:
        """Requests per minute and mean latency per backend over the last `minutes`; tokens per day."""
        now = time.time() if now is None else now
        await self.flush()
        if self._db is None:
            rows = [r for r in self.ring if r.time >= now - days * 86400]
        else:
            rows = await asyncio.to_thread(self._since, now - days * 86400)
        return summarise(rows, now, minutes=minutes, days=days)

    def _since(self, start: float) -> list[RequestRecord]:
        with self._lock:
            if self._db is None:
                return []
            cursor = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM requests WHERE time >= ? ORDER BY time",  # noqa: S608
                (start,))
            return [RequestRecord(*row) for row in cursor.fetchall()]


def _without_content(record: RequestRecord) -> RequestRecord:
    values = record.to_dict()
    values["content"] = None
    return RequestRecord(**values)


def summarise(rows: Iterable[RequestRecord], now: float, *, minutes: int, days: int) -> dict[str, Any]:
    """Per-minute buckets (oldest first) per backend, and per-day token sums (local dates)."""
    first_minute = int(now // 60) - minutes + 1
    per_minute: dict[str, list[int]] = {}
    latency_sum: dict[str, list[float]] = {}
    tokens: dict[str, dict[str, int]] = {}
    for day in range(days - 1, -1, -1):
        tokens[time.strftime("%Y-%m-%d", time.localtime(now - day * 86400))] = {"prompt": 0, "completion": 0}
    for record in rows:
        day_key = time.strftime("%Y-%m-%d", time.localtime(record.time))
        if day_key in tokens:
            tokens[day_key]["prompt"] += record.prompt_tokens or 0
            tokens[day_key]["completion"] += record.completion_tokens or 0
        index = int(record.time // 60) - first_minute
        if 0 <= index < minutes:
            backend = record.backend or "(none)"
            counts = per_minute.setdefault(backend, [0] * minutes)
            sums = latency_sum.setdefault(backend, [0.0] * minutes)
            counts[index] += 1
            sums[index] += record.duration_ms
    latency = {
        backend: [round(sums[i] / counts[i], 1) if counts[i] else None for i in range(minutes)]
        for backend, sums in latency_sum.items()
        for counts in (per_minute[backend],)
    }
    return {
        "minute_start": first_minute * 60,
        "minutes": minutes,
        "requests_per_minute": per_minute,
        "latency_ms": latency,
        "tokens_per_day": [{"day": day, **value} for day, value in tokens.items()],
    }
