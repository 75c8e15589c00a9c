"""Model lists, cached in memory and on disk, so IDEs that ask constantly are answered at once.

An entry is fresh for the TTL; after that it is still served while one background refresh runs.
Concurrent askers share one upstream fetch. When the upstream cannot be reached, the last list
(from memory or disk) is served and marked stale. A corrupt cache file is ignored and rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..config.paths import write_private

log = logging.getLogger(__name__)

ModelList = list[dict[str, Any]]
Fetcher = Callable[[], Awaitable[ModelList]]
RETRY_INTERVAL = 10.0  # seconds between refresh attempts while an upstream keeps failing


@dataclass(slots=True)
class CacheEntry:
    models: ModelList
    fetched_at: float  # wall-clock time of the fetch, kept on disk
    error: str | None = None  # why the last refresh failed, if it did
    attempted_at: float = 0.0  # monotonic time of the last refresh attempt
    # What the list was fetched from (a digest of URL, model list, key): other settings, another list.
    source: str = ""
    refreshing: asyncio.Task[None] | None = field(default=None, repr=False)

    def age(self) -> float:
        return max(0.0, time.time() - self.fetched_at)


@dataclass(frozen=True, slots=True)
class CachedList:
    models: ModelList
    fetched_at: float | None
    stale: bool
    error: str | None


class ModelListCache:
    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory = directory
        self.ttl = ttl
        self._entries: dict[str, CacheEntry] = {}
        self._inflight: dict[str, asyncio.Task[CacheEntry]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.upstream_fetches = 0

    def _file(self, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80]
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.directory / f"models-{safe}-{digest}.json"

    def peek(self, key: str) -> CachedList | None:
        """The entry without touching the network, or None when there is nothing fresh in memory."""
        entry = self._entries.get(key)
        if entry is None or entry.error is not None or entry.age() >= self.ttl:
            return None
        return CachedList(entry.models, entry.fetched_at, False, None)

    async def get(self, key: str, fetch: Fetcher, *, refresh: bool = False, source: str = "") -> CachedList:
        entry = self._entries.get(key)
        if entry is None and not refresh:
            entry = self._load(key)
        if entry is not None and entry.source != source:
            entry = None  # fetched under settings since changed (reload, restart): not this list
        if entry is not None and not refresh:
            if entry.age() < self.ttl and entry.error is None:
                return CachedList(entry.models, entry.fetched_at, False, None)
            self._refresh_in_background(key, fetch, entry, source)
            return CachedList(entry.models, entry.fetched_at, True, entry.error)
        try:
            entry = await self._fetch_once(key, fetch, source)
        except Exception as exc:
            fallback = self._entries.get(key) or self._load(key)
            if fallback is None or fallback.source != source:
                raise
            fallback.error = _describe(exc)
            return CachedList(fallback.models, fallback.fetched_at, True, fallback.error)
        return CachedList(entry.models, entry.fetched_at, False, None)

    def _refresh_in_background(self, key: str, fetch: Fetcher, entry: CacheEntry, source: str) -> None:
        # While the upstream is down, try again now and then rather than on every ask.
        if key in self._inflight or time.monotonic() - entry.attempted_at < min(self.ttl, RETRY_INTERVAL):
            return
        entry.attempted_at = time.monotonic()

        async def refresh() -> None:
            with contextlib.suppress(Exception):
                await self._fetch_once(key, fetch, source)

        task = asyncio.get_running_loop().create_task(refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_once(self, key: str, fetch: Fetcher, source: str = "") -> CacheEntry:
        """One upstream fetch per key at a time; everyone asking meanwhile awaits the same one."""
        pending = self._inflight.get(key)
        if pending is None:
            # The fetch is a task of its own: an asker that goes away (a client disconnecting cancels
            # its handler) must not cancel the fetch the other askers are waiting for.
            pending = asyncio.get_running_loop().create_task(self._fetch(key, fetch, source))
            self._inflight[key] = pending
            self._tasks.add(pending)
            pending.add_done_callback(self._tasks.discard)
        return await asyncio.shield(pending)

    async def _fetch(self, key: str, fetch: Fetcher, source: str) -> CacheEntry:
        try:
            self.upstream_fetches += 1
            models = await fetch()
            entry = CacheEntry(models=models, fetched_at=time.time(), attempted_at=time.monotonic(), source=source)
            self._entries[key] = entry
            self._store(key, entry)
            return entry
        except Exception as exc:
            stale = self._entries.get(key)
            if stale is not None:
                stale.error = _describe(exc)
            raise
        finally:
            del self._inflight[key]

    def _load(self, key: str) -> CacheEntry | None:
        path = self._file(key)
        try:
            data = orjson.loads(path.read_bytes())
            models = data["models"]
            fetched_at = float(data["fetched_at"])
            source = str(data.get("source", ""))
            if data.get("key") != key or not isinstance(models, list):
                raise ValueError("unexpected content")
            if not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
                raise ValueError("a model without an id")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring corrupt model cache file %s (%s); it will be rebuilt", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        entry = CacheEntry(models=models, fetched_at=fetched_at, source=source)
        self._entries[key] = entry
        return entry

    def _store(self, key: str, entry: CacheEntry) -> None:
        data = {"key": key, "source": entry.source, "fetched_at": entry.fetched_at, "models": entry.models}
        try:
            write_private(self._file(key), orjson.dumps(data))
        except OSError as exc:
            log.warning("cannot write the model cache (%s); serving from memory only", exc)

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for key, entry in sorted(self._entries.items()):
            rows.append(
                {
                    "key": key,
                    "models": len(entry.models),
                    "fetched_at": entry.fetched_at,
                    "age_seconds": round(entry.age(), 1),
                    "stale": entry.error is not None or entry.age() >= self.ttl,
                    "error": entry.error,
                }
            )
        return rows

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
