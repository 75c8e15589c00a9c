"""The benchmark's dashboard first-load measurement, against the real daemon."""

from __future__ import annotations

import asyncio

from benchmarks.run import dashboard_first_load
from tests.conftest import StartDaemon


async def test_dashboard_first_load_is_measured_and_small(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon()
    result = await asyncio.to_thread(dashboard_first_load, daemon.url, 3)
    assert 0 < result["p50_ms"] < 5000
    assert 10 < result["kb"] < 150  # the whole first load, under the 150 KB
