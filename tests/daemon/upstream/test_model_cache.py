"""model_cache.py: one upstream fetch for many askers, stale-while-revalidate, disk fallback, corrupt files.

First the cache on its own (real asyncio, real files), then through the daemon against the hosted
stand-in, counting what the upstream really saw with `calls_by_path`.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion.config.workspaces import add_workspace
from llmtune_companion.upstream.model_cache import ModelList, ModelListCache

from tests.conftest import Daemon, StandIn, StartDaemon

MODELS_PATH = "/api/agent/models"
HOSTED = "meta-llama/Llama-3.3-70B-Instruct"


class Upstream:
    """A scripted model-list source: counts calls, can be slow, can fail, can be held."""

    def __init__(self, models: list[str] | None = None) -> None:
        self.models = models or ["a", "b"]
        self.calls = 0
        self.delay = 0.0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> ModelList:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return [{"id": model} for model in self.models]


def ids(models: ModelList) -> list[str]:
    return [m["id"] for m in models]


async def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("models-*.json"))


# -- the cache on its own ------------------------------------------------------------------------


async def test_many_asks_in_a_row_cost_one_fetch(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=60), Upstream()
    for _ in range(50):
        listed = await cache.get("llmtune@default", upstream)
        assert ids(listed.models) == ["a", "b"] and not listed.stale and listed.error is None
    assert upstream.calls == 1
    assert cache.upstream_fetches == 1
    assert cache.peek("llmtune@default") is not None
    assert cache.peek("other") is None


async def test_concurrent_askers_share_one_fetch(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=60), Upstream()
    upstream.delay = 0.05
    results = await asyncio.gather(*(cache.get("k", upstream) for _ in range(20)))
    assert upstream.calls == 1
    assert all(ids(r.models) == ["a", "b"] and not r.stale for r in results)
    # Keys are independent: another key is its own fetch.
    await cache.get("other", upstream)
    assert upstream.calls == 2


async def test_concurrent_askers_share_one_failure(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=60), Upstream()
    upstream.delay, upstream.error = 0.05, ConnectionError("upstream down")
    results = await asyncio.gather(*(cache.get("k", upstream) for _ in range(20)), return_exceptions=True)
    assert upstream.calls == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    # Nothing was ever fetched, so there is nothing to serve.
    assert cache_files(tmp_path) == []


async def test_an_asker_that_goes_away_does_not_cancel_the_shared_fetch(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=60), Upstream()
    upstream.delay = 0.1
    leaving = asyncio.create_task(cache.get("k", upstream))
    await asyncio.sleep(0.01)
    staying = asyncio.create_task(cache.get("k", upstream))
    await asyncio.sleep(0.01)
    leaving.cancel()  # what aiohttp does to a handler whose client disconnected
    listed = await asyncio.wait_for(staying, 1.0)
    assert ids(listed.models) == ["a", "b"] and not listed.stale
    assert leaving.cancelled()
    assert upstream.calls == 1
    # The fetch was finished for the next asker too, even with every asker gone.
    alone = asyncio.create_task(cache.get("j", upstream))
    await asyncio.sleep(0.01)
    alone.cancel()
    await wait_for(lambda: cache.peek("j") is not None)
    assert upstream.calls == 2


async def test_stale_list_is_served_at_once_while_one_refresh_runs(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=0.2), Upstream()
    first = await cache.get("k", upstream)
    await asyncio.sleep(0.25)
    upstream.gate, upstream.models = asyncio.Event(), ["a", "b", "new"]
    started = time.monotonic()
    stale = [await asyncio.wait_for(cache.get("k", upstream), 0.5) for _ in range(10)]
    assert time.monotonic() - started < 0.2  # nobody waited for the upstream
    assert all(s.stale and ids(s.models) == ["a", "b"] and s.fetched_at == first.fetched_at for s in stale)
    assert upstream.calls == 2  # one background refresh, however many asked
    assert cache.status()[0]["stale"] is True
    upstream.gate.set()
    await wait_for(lambda: cache.peek("k") is not None)
    fresh = await cache.get("k", upstream)
    assert not fresh.stale and ids(fresh.models) == ["a", "b", "new"]
    assert upstream.calls == 2
    assert cache.status()[0]["stale"] is False


async def test_failed_refresh_keeps_serving_and_reports_the_error(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=0.1), Upstream()
    await cache.get("k", upstream)
    await asyncio.sleep(0.15)
    upstream.error = ConnectionError("connection refused")
    listed = await cache.get("k", upstream)
    assert listed.stale and ids(listed.models) == ["a", "b"]
    await wait_for(lambda: cache.status()[0]["error"] is not None)
    row = cache.status()[0]
    assert row["stale"] is True and "connection refused" in row["error"] and row["models"] == 2
    listed = await cache.get("k", upstream)
    assert listed.stale and listed.error is not None and "connection refused" in listed.error
    # A forced refresh that fails serves the last list too, marked stale.
    forced = await cache.get("k", upstream, refresh=True)
    assert forced.stale and ids(forced.models) == ["a", "b"] and forced.error
    # The upstream comes back: the next refresh clears the error.
    upstream.error = None
    recovered = await cache.get("k", upstream, refresh=True)
    assert not recovered.stale and recovered.error is None
    assert cache.status()[0]["error"] is None


async def test_a_failing_upstream_is_not_hammered(tmp_path: Path) -> None:
    ttl = 0.2
    cache, upstream = ModelListCache(tmp_path, ttl=ttl), Upstream()
    await cache.get("k", upstream)
    await asyncio.sleep(ttl + 0.05)
    upstream.error = ConnectionError("down")
    started = time.monotonic()
    for _ in range(20):
        await cache.get("k", upstream)
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - started
    # One attempt per TTL (or RETRY_INTERVAL) at most, not one per ask.
    assert upstream.calls - 1 <= 1 + int(elapsed / ttl)


async def test_last_list_survives_a_restart_on_disk(tmp_path: Path) -> None:
    first = ModelListCache(tmp_path, ttl=0.1)
    await first.get("llmtune@default", Upstream(["x", "y"]))
    await first.aclose()
    files = cache_files(tmp_path)
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    await asyncio.sleep(0.15)
    # A new process, and the upstream is down.
    down = Upstream()
    down.error = OSError("connection refused")
    second = ModelListCache(tmp_path, ttl=0.1)
    listed = await second.get("llmtune@default", down)
    assert ids(listed.models) == ["x", "y"] and listed.stale
    await wait_for(lambda: bool(second.status()) and second.status()[0]["error"] is not None)
    row = second.status()[0]
    assert row["key"] == "llmtune@default" and row["stale"] and "connection refused" in row["error"]
    # Even a forced refresh falls back to the disk copy.
    third = ModelListCache(tmp_path, ttl=300)
    forced = await third.get("llmtune@default", down, refresh=True)
    assert ids(forced.models) == ["x", "y"] and forced.stale and "connection refused" in (forced.error or "")
    for cache in (second, third):
        await cache.aclose()


async def test_a_fresh_disk_copy_is_used_without_asking(tmp_path: Path) -> None:
    await ModelListCache(tmp_path, ttl=300).get("k", Upstream(["x"]))
    upstream = Upstream(["other"])
    listed = await ModelListCache(tmp_path, ttl=300).get("k", upstream)
    assert ids(listed.models) == ["x"] and not listed.stale
    assert upstream.calls == 0


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"key": "k", "fetched_at": 1, "models": "nope"}',
        b'{"key": "k", "fetched_at": 1, "models": [{"name": "no id"}]}',
        b'{"key": "another key", "fetched_at": 1, "models": []}',
        b'{"key": "k", "fetched_at": "soon", "models": []}',
        b'{"key": "k", "models": []}',
    ],
)
async def test_a_corrupt_cache_file_is_ignored_and_rebuilt(tmp_path: Path, content: bytes) -> None:
    await ModelListCache(tmp_path, ttl=300).get("k", Upstream(["old"]))
    (path,) = cache_files(tmp_path)
    path.write_bytes(content)
    upstream = Upstream(["rebuilt"])
    listed = await ModelListCache(tmp_path, ttl=300).get("k", upstream)
    assert ids(listed.models) == ["rebuilt"] and not listed.stale
    assert upstream.calls == 1
    data = orjson.loads(path.read_bytes())
    assert data["key"] == "k" and ids(data["models"]) == ["rebuilt"]


async def test_a_list_fetched_under_other_settings_is_not_served(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=300), Upstream(["old-url-model"])
    await cache.get("lab", upstream, source="url-1")
    upstream.models = ["new-url-model"]
    listed = await cache.get("lab", upstream, source="url-2")  # the backend's URL changed
    assert ids(listed.models) == ["new-url-model"] and upstream.calls == 2
    # After a restart the disk copy is checked the same way.
    restarted = Upstream(["third"])
    assert ids((await ModelListCache(tmp_path, ttl=300).get("lab", restarted, source="url-3")).models) == ["third"]
    assert ids((await ModelListCache(tmp_path, ttl=300).get("lab", restarted, source="url-3")).models) == ["third"]
    assert restarted.calls == 1
    # When the new source cannot be reached, the other settings' list is not a fallback.
    down = Upstream()
    down.error = ConnectionError("down")
    with pytest.raises(ConnectionError):
        await ModelListCache(tmp_path, ttl=300).get("lab", down, source="url-4")


async def test_refresh_forces_a_fetch(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=300), Upstream()
    await cache.get("k", upstream)
    upstream.models = ["c"]
    assert ids((await cache.get("k", upstream)).models) == ["a", "b"]
    assert ids((await cache.get("k", upstream, refresh=True)).models) == ["c"]
    assert upstream.calls == 2


async def test_aclose_cancels_a_hanging_refresh(tmp_path: Path) -> None:
    cache, upstream = ModelListCache(tmp_path, ttl=0.05), Upstream()
    await cache.get("k", upstream)
    await asyncio.sleep(0.06)
    upstream.gate = asyncio.Event()  # never set: the refresh hangs
    await cache.get("k", upstream)
    await asyncio.wait_for(cache.aclose(), 1.0)


# -- through the daemon --------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def list_models(http: aiohttp.ClientSession, daemon: Daemon, **headers: str) -> list[str]:
    async with http.get(daemon.url + "/v1/models", headers={**daemon.auth(), **headers}) as response:
        assert response.status == 200, await response.text()
        data: list[dict[str, Any]] = (await response.json())["data"]
        return [m["id"] for m in data]


async def control_status(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(daemon.url + "/companion/v1/status", headers=daemon.auth(daemon.control_token)) as response:
        assert response.status == 200
        status: dict[str, Any] = await response.json()
        return status


def hosted_row(status: dict[str, Any]) -> dict[str, Any]:
    (row,) = [r for r in status["model_cache"] if r["key"] == "llmtune@default"]
    return row


async def test_daemon_many_model_lists_cost_one_upstream_call(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    for _ in range(15):
        models = await list_models(http, daemon)
        assert HOSTED in models and "echo" in models
    assert standin.api.calls_by_path[MODELS_PATH] == 1


async def test_daemon_concurrent_model_lists_share_one_fetch(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.first_byte_delay = 0.1
    lists = await asyncio.gather(*(list_models(http, daemon) for _ in range(20)))
    assert all(HOSTED in models for models in lists)
    assert standin.api.calls_by_path[MODELS_PATH] == 1


async def test_daemon_serves_stale_list_at_once_and_refreshes_in_background(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url}, config="[cache]\nmodels_ttl = 0.2\n")
    before = await list_models(http, daemon)
    await asyncio.sleep(0.3)
    standin.api.add_model("workspace/brand-new")
    standin.api.first_byte_delay = 1.0  # the refresh is slow; nobody should wait for it
    for _ in range(5):
        started = time.monotonic()
        assert await list_models(http, daemon) == before
        assert time.monotonic() - started < 0.5
    assert standin.api.calls_by_path[MODELS_PATH] == 2  # one background refresh
    assert hosted_row(await control_status(http, daemon))["stale"] is True

    def refreshed() -> bool:
        fresh = daemon.runtime.model_cache.peek("llmtune@default")
        return fresh is not None and "workspace/brand-new" in ids(fresh.models)

    await wait_for(refreshed, timeout=5)
    standin.api.first_byte_delay = 0.0
    assert "workspace/brand-new" in await list_models(http, daemon)


async def test_daemon_upstream_errors_mark_the_list_stale(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url}, config="[cache]\nmodels_ttl = 0.2\n")
    before = await list_models(http, daemon)
    await asyncio.sleep(0.3)
    standin.api.fail_next(500, times=5, path_prefix=MODELS_PATH)
    assert await list_models(http, daemon) == before  # served from cache while the refresh fails
    await wait_for(lambda: hosted_row(daemon.runtime.status())["error"] is not None)
    row = hosted_row(await control_status(http, daemon))
    assert row["stale"] is True and "500" in row["error"] and row["models"] > 0
    assert await list_models(http, daemon, **{"Cache-Control": "no-cache"}) == before  # forced, fails, still served


async def test_daemon_restart_with_upstream_down_serves_the_disk_copy(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    first = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url}, config="[cache]\nmodels_ttl = 0.2\n")
    before = await list_models(http, first)
    assert HOSTED in before
    await first.server.close()
    await asyncio.sleep(0.3)
    # Restart while the hosted API is unreachable (nothing listens on its port any more).
    hosted_url = standin.url
    await standin.server.close()
    second = await start_daemon(env={"LLMTUNE_BASE_URL": hosted_url})
    assert second.runtime is not first.runtime
    assert await list_models(http, second) == before
    await wait_for(lambda: hosted_row(second.runtime.status())["error"] is not None)
    row = hosted_row(await control_status(http, second))
    assert row["stale"] is True and "cannot be reached" in row["error"]
    # A forced refresh cannot reach it either: the disk copy is still what clients get.
    assert await list_models(http, second, **{"Cache-Control": "no-cache"}) == before


async def test_daemon_restart_with_upstream_failing_serves_the_disk_copy(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    first = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    before = await list_models(http, first)
    await first.server.close()
    standin.api.fail_next(500, times=10, path_prefix=MODELS_PATH)
    second = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    assert await list_models(http, second, **{"Cache-Control": "no-cache"}) == before
    row = hosted_row(await control_status(http, second))
    assert row["stale"] is True and "HTTP 500" in row["error"]
    assert standin.api.calls_by_path[MODELS_PATH] == 2


async def test_daemon_rebuilds_a_corrupt_cache_file(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    first = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    await list_models(http, first)
    await first.server.close()
    (path,) = cache_files(first.paths.cache_dir)
    path.write_bytes(b"\x00garbage{")
    second = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    assert HOSTED in await list_models(http, second)
    assert standin.api.calls_by_path[MODELS_PATH] == 2
    assert HOSTED in [m["id"] for m in orjson.loads(path.read_bytes())["models"]]


async def test_daemon_no_cache_header_forces_a_refresh(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    await list_models(http, daemon)
    await list_models(http, daemon)
    assert standin.api.calls_by_path[MODELS_PATH] == 1
    standin.api.add_model("workspace/just-deployed")
    assert "workspace/just-deployed" not in await list_models(http, daemon)
    assert "workspace/just-deployed" in await list_models(http, daemon, **{"Cache-Control": "no-cache"})
    assert standin.api.calls_by_path[MODELS_PATH] == 2
    async with http.get(daemon.url + "/v1/models?refresh=1", headers=daemon.auth()) as response:
        assert response.status == 200
    assert standin.api.calls_by_path[MODELS_PATH] == 3
    # Afterwards the refreshed list is cached again.
    assert "workspace/just-deployed" in await list_models(http, daemon)
    assert standin.api.calls_by_path[MODELS_PATH] == 3


async def test_daemon_a_client_hanging_up_does_not_fail_the_others(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.first_byte_delay = 0.3
    impatient = asyncio.create_task(list_models(http, daemon))
    await asyncio.sleep(0.05)
    patient = asyncio.create_task(list_models(http, daemon))
    await asyncio.sleep(0.05)
    impatient.cancel()  # its connection is closed: the daemon cancels its handler
    assert HOSTED in await asyncio.wait_for(patient, 3.0)
    assert standin.api.calls_by_path[MODELS_PATH] == 1


async def test_daemon_a_new_key_gets_its_own_list(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    assert HOSTED in await list_models(http, daemon)
    # The workspace gets another key (another LLMTune account): the first account's list is not served.
    add_workspace(daemon.paths, "default", "sk_another_account_00000000")
    assert daemon.runtime.reload()
    assert HOSTED not in await list_models(http, daemon)  # the stand-in refuses that key
    assert standin.api.calls_by_path[MODELS_PATH] == 2
