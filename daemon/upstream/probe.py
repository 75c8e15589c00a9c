"""Asking each backend now whether it answers: what `llmtune-companion status` shows per backend.

A probe lists the backend's models (the cheapest call every backend has), timed and time-limited.
It neither fills nor refreshes the model cache: a status check must not change what clients see.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..adapters import Backend, BackendUnavailable
from ..config.settings import Workspace
from ..runtime import Runtime, UpstreamStatusError

# A status check waits at most this long for one backend.
PROBE_TIMEOUT = 5.0


def _probe_workspace(runtime: Runtime, backend: Backend) -> Workspace:
    """The workspace whose key the probe sends: for the hosted API, the first one that has a key."""
    workspaces = list(runtime.config.workspaces.values())
    if backend.injects_workspace_key:
        with_key = [ws for ws in workspaces if ws.has_key]
        if with_key:
            return with_key[0]
    return workspaces[0]


async def probe(runtime: Runtime, backend: Backend) -> dict[str, Any]:
    """`{reachable, latency_ms, models, error}`: reachable is True once the backend answered HTTP at all."""
    result: dict[str, Any] = {"name": backend.name, "type": backend.kind, "url": backend.url,
                              "reachable": False, "latency_ms": None, "models": None, "error": None}
    problem = backend.missing_dependency()
    if problem is not None:
        result["error"] = problem
        return result
    workspace = _probe_workspace(runtime, backend)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            models = await runtime.fetch_models(backend, workspace)
    except TimeoutError:
        result["error"] = f"no answer within {PROBE_TIMEOUT:g}s"
    except BackendUnavailable as exc:
        result["error"] = str(exc)
    except UpstreamStatusError as exc:
        result["reachable"] = True
        hint = " (no workspace has an LLMTune key)" if exc.status == 401 and not workspace.has_key else ""
        result["error"] = f"{exc}{hint}"
    except Exception as exc:
        result["reachable"] = True
        result["error"] = str(exc) or type(exc).__name__
    else:
        result["reachable"] = True
        result["models"] = len(models)
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


async def probe_all(runtime: Runtime) -> list[dict[str, Any]]:
    """Every backend at once, each with its model cache's age (the entry for the probe's workspace)."""
    backends = list(runtime.backends.values())
    results = await asyncio.gather(*(probe(runtime, backend) for backend in backends))
    cache = {row["key"]: row for row in runtime.model_cache.status()}
    for backend, result in zip(backends, results, strict=True):
        row = cache.get(runtime.cache_key(backend, _probe_workspace(runtime, backend)))
        result["cache_age_seconds"] = row["age_seconds"] if row else None
        result["cache_error"] = row["error"] if row else None
    return list(results)
