"""The daemon's live state: the current config and everything built from it, swapped whole on reload."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .adapters import BACKEND_TYPES, Backend, BackendRequest, BackendSettings, LLMTuneBackend
from .api.egress import known_secrets
from .config.paths import Paths
from .config.settings import (
    ECHO_BACKEND,
    HOSTED_BACKEND,
    Config,
    ConfigError,
    Workspace,
    load_config,
    secrets_status,
)
from .history import HISTORY_FILE, History
from .logs import RequestLog
from .tools import ToolRunner
from .tools.approvals import ApprovalBroker
from .tools.audit import AuditLog
from .tools.journal import Journal
from .tools.policy import Policy
from .upstream.autodetect import Autodetector, wanted
from .upstream.connections import Upstreams
from .upstream.model_cache import CachedList, ModelList, ModelListCache
from .upstream.routing import Router

log = logging.getLogger(__name__)

SETTINGS_RELOADED = "settings.reloaded"

# Settings read once at start (the listening socket, the connection pool): a reload cannot apply them.
RESTART_SETTINGS = (("server", "host"), ("server", "port"), ("upstream", "pool_size"))


def settings_needing_restart(running: Config, edited: Config) -> list[str]:
    """`section.name: old -> new` for each start-only setting the edit changed."""
    changed = []
    for section, name in RESTART_SETTINGS:
        old = getattr(getattr(running.settings, section), name)
        new = getattr(getattr(edited.settings, section), name)
        if old != new:
            changed.append(f"{section}.{name}: {old} -> {new}")
    return changed


class UpstreamStatusError(Exception):
    def __init__(self, backend: str, status: int) -> None:
        super().__init__(f"backend {backend!r} answered HTTP {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Built:
    """What one config builds; replaced as a whole so a request never sees half a reload."""

    config: Config
    backends: dict[str, Backend]
    router: Router
    tokens: tuple[tuple[bytes, Workspace], ...]
    tool_runners: dict[str, ToolRunner]
    # Every key this config knows: scrubbed from whatever leaves the daemon (egress.py).
    secrets: tuple[str, ...] = ()


class Runtime:
    def __init__(self, paths: Paths, config: Config, session: aiohttp.ClientSession) -> None:
        self.paths = paths
        self.session = session  # the daemon's own calls (job webhooks), not the relay's
        self.upstreams = Upstreams(config.settings.upstream)
        self.started_at = time.time()
        self.hosted_degraded = False  # a request fell back from the hosted API (hosted.fallback was published)
        self.in_flight = 0  # requests inside the guard: a graceful shutdown waits for them
        self.drained: asyncio.Event | None = None  # set by the guard when the last one ends, once draining
        self.config_error: str | None = None
        self.started_config = config
        # Start-only settings edited since the start, applied by a restart only (shown by status).
        self.restart_needed: list[str] = []
        self.reloads = 0
        self.model_cache = ModelListCache(paths.cache_dir, config.settings.cache.models_ttl)
        history = config.settings.history
        self.history = History(paths.root / HISTORY_FILE if history.persist else None, ring_size=history.ring_size,
                               store_content=history.store_content, retention_days=history.retention_days)
        self.request_log = RequestLog(logging.getLogger("llmtune_companion.requests"), history=self.history)
        # Pending approvals outlive reloads: the broker belongs to the daemon, not to a config.
        self.approvals = ApprovalBroker(timeout=config.settings.tools.approval_timeout)
        self.journal = Journal.for_paths(paths)
        self.audit = AuditLog.for_paths(paths)
        # Local servers found on their well-known ports; what it finds outlives reloads.
        self.autodetect = Autodetector(session, self._detected_changed)
        self.built = self._build(config)
        self._listing_memo: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    # -- config -------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.built.config

    @property
    def backends(self) -> dict[str, Backend]:
        return self.built.backends

    @property
    def router(self) -> Router:
        return self.built.router

    def _build(self, config: Config) -> Built:
        for warning in config.secrets_warnings:  # a keychain that does not answer (never a key)
            log.warning("keys: %s", warning)
        upstream = config.settings.upstream
        backends: dict[str, Backend] = {}
        secrets: list[str | None] = [ws.api_key for ws in config.workspaces.values()]
        if config.settings.hosted.enabled:
            backends[HOSTED_BACKEND] = LLMTuneBackend(
                HOSTED_BACKEND, self.upstreams.context(HOSTED_BACKEND, upstream), url=config.hosted_url)
        for name, spec in config.backends.items():
            backends[name] = BACKEND_TYPES[spec.type].from_settings(name, self.upstreams.context(name, upstream), spec)
            if spec.api_key_env:
                secrets.append(os.environ.get(spec.api_key_env))
        for name, url in self._detected(config).items():
            found = BackendSettings(type="openai", url=url)
            backends[name] = BACKEND_TYPES["openai"].from_settings(name, self.upstreams.context(name, upstream), found)
        tokens = tuple((ws.token.encode(), ws) for ws in config.workspaces.values())
        runners = {
            ws.name: self._tool_runner(ws)
            for ws in config.workspaces.values()
            if ws.settings.root is not None
        }
        return Built(config, backends, Router(config.settings, backends), tokens, runners, known_secrets(secrets))

    def _detected(self, config: Config) -> dict[str, str]:
        if not config.settings.autodetect.enabled:
            return {}
        return wanted(self.autodetect.found, config.backends)

    def _detected_changed(self) -> None:
        self.built = self._build(self.config)
        self._listing_memo.clear()

    def detect_in_background(self, *, older_than: float = 0.0) -> None:
        """Probe for local servers without waiting (at start, and when model lists are refreshed)."""
        settings = self.config.settings
        self.autodetect.kick(settings.autodetect, older_than=older_than, skip_port=settings.server.port)

    async def detect_local_servers(self) -> None:
        """Probe for local servers and wait for the answer (for the command line, never for a request)."""
        self.detect_in_background()
        await self.autodetect.wait()

    async def aclose(self) -> None:
        """Stop the background work and close the connections this runtime owns (a second call does
        nothing more)."""
        self.request_log.flush()
        await self.autodetect.aclose()
        await self.history.aclose()
        await self.model_cache.aclose()
        await self.upstreams.aclose()

    def _tool_runner(self, workspace: Workspace) -> ToolRunner:
        assert workspace.settings.root is not None
        # One journal and one audit log for every workspace: they share files, so they share locks and ids.
        return ToolRunner(
            Path(workspace.settings.root).expanduser(),
            companion_dir=self.paths.root,
            policy=Policy(workspace.settings.policy),
            broker=self.approvals,
            journal=self.journal,
            audit=self.audit,
            limits=workspace.settings.limits,
            on_remember=self._remember_rule,
        )

    def _remember_rule(self, workspace: str, rule: str) -> None:
        """An "allow and remember" becomes an allow rule in config.toml, so it survives reloads."""
        from .config.workspaces import remember_allow_rule

        remember_allow_rule(self.paths, workspace, rule)

    def abort_upstreams(self, reason: str) -> None:
        """End every upstream exchange in progress (shutdown's bound); relays report `reason`."""
        self.upstreams.abort(reason)


    def tool_runner(self, workspace: str) -> ToolRunner | None:
        return self.built.tool_runners.get(workspace)

    def reload(self) -> bool:
        """Re-read the settings; an invalid edit keeps the last good ones and is reported."""
        try:
            config = load_config(self.paths)
        except ConfigError as exc:
            self.config_error = str(exc)
            log.error("config reload failed, keeping the last good settings: %s", exc)
            self.approvals.publish({"type": SETTINGS_RELOADED, "valid": False, "error": self.config_error})
            return False
        self.built = self._build(config)
        self.detect_in_background()  # the ports to probe may have changed
        self.model_cache.ttl = config.settings.cache.models_ttl
        self.approvals.timeout = config.settings.tools.approval_timeout
        self.history.store_content = config.settings.history.store_content
        self._listing_memo.clear()
        self.config_error = None
        self.reloads += 1
        log.info("settings reloaded (%d workspaces, backends: %s)", len(config.workspaces), ", ".join(self.backends))
        self.restart_needed = settings_needing_restart(self.started_config, config)
        if self.restart_needed:
            log.warning("%s changed; these apply only after a restart: run `llmtune-companion restart`",
                        "; ".join(self.restart_needed))
        # The tray and the dashboard re-read the status on this instead of polling it.
        self.approvals.publish({"type": SETTINGS_RELOADED, "valid": True, "error": None})
        return True

    def authenticate(self, token: str) -> Workspace | None:
        """Find the workspace a local token belongs to, comparing every token in constant time."""
        presented = token.encode()
        found: Workspace | None = None
        for expected, workspace in self.built.tokens:
            if hmac.compare_digest(presented, expected):
                found = workspace
        return found

    # -- model lists --------------------------------------------------------------------------

    def cache_key(self, backend: Backend, workspace: Workspace) -> str:
        return f"{backend.name}@{workspace.name}" if backend.per_workspace_models else backend.name

    def _cache_source(self, backend: Backend, workspace: Workspace) -> str:
        """A digest of what a backend's list comes from: another URL, model list or key is another list."""
        parts = [backend.kind, backend.url or "", *backend.static_models]
        if backend.per_workspace_models:
            parts.append(workspace.api_key or "")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    async def fetch_models(self, backend: Backend, workspace: Workspace) -> ModelList:
        response = await backend.handle(BackendRequest("models", api_key=workspace.api_key))
        try:
            body = await response.read()
        finally:
            await response.aclose()
        if response.status != 200:
            raise UpstreamStatusError(backend.name, response.status)
        parsed = orjson.loads(body)
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(data, list):
            raise ValueError(f"backend {backend.name!r} sent a model list without 'data'")
        return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]

    def _listed_backends(self, workspace: Workspace) -> list[Backend]:
        # The hosted list needs the workspace's key; without one there is nothing to ask for.
        return [b for b in self.backends.values() if not (b.injects_workspace_key and not workspace.has_key)]

    async def backend_models(
        self, backend: Backend, workspace: Workspace, *, refresh: bool = False
    ) -> CachedList | None:
        """One backend's list through the cache; None when it has never been reachable."""
        if backend.serves_any_model:
            return CachedList(await self.fetch_models(backend, workspace), time.time(), False, None)
        key = self.cache_key(backend, workspace)
        try:
            return await self.model_cache.get(key, lambda: self.fetch_models(backend, workspace), refresh=refresh,
                                              source=self._cache_source(backend, workspace))
        except Exception as exc:
            log.warning("cannot list models of backend %r: %s", backend.name, exc)
            return None

    async def list_models(self, workspace: Workspace, *, refresh: bool = False) -> ModelList:
        """Every model this workspace can use, under the ids clients send back."""
        # A refresh of the lists is also when new local servers are looked for (never waited for here).
        self.detect_in_background(older_than=0.0 if refresh else self.model_cache.ttl)
        merged: ModelList = []
        for backend, listed in await self._all_lists(workspace, refresh):
            if listed is None:
                continue
            for model in listed.models:
                entry = dict(model)
                entry["id"] = self.router.public_id(backend.name, model["id"])
                entry.setdefault("object", "model")
                entry.setdefault("created", 0)
                entry.setdefault("owned_by", backend.name)
                merged.append(entry)
        return merged

    async def _all_lists(self, workspace: Workspace, refresh: bool) -> list[tuple[Backend, CachedList | None]]:
        backends = self._listed_backends(workspace)
        lists = await asyncio.gather(*(self.backend_models(b, workspace, refresh=refresh) for b in backends))
        return list(zip(backends, lists, strict=True))

    async def models_listing(self, workspace: Workspace, *, refresh: bool = False) -> bytes:
        """GET /v1/models' body; served from a memo while every list behind it is fresh."""
        if not refresh:
            signature = self._fresh_signature(workspace)
            if signature is not None:
                memo = self._listing_memo.get(workspace.name)
                if memo is not None and memo[0] == signature:
                    return memo[1]
        models = await self.list_models(workspace, refresh=refresh)
        body = orjson.dumps({"object": "list", "data": models})
        signature = self._fresh_signature(workspace)
        if signature is not None:
            self._listing_memo[workspace.name] = (signature, body)
        return body

    def _fresh_signature(self, workspace: Workspace) -> tuple[Any, ...] | None:
        parts: list[Any] = [id(self.built)]
        for backend in self._listed_backends(workspace):
            if backend.serves_any_model:
                continue
            fresh = self.model_cache.peek(self.cache_key(backend, workspace))
            if fresh is None:
                return None
            parts.append(fresh.fetched_at)
        return tuple(parts)

    async def model_is_listed(self, backend: Backend, model: str, workspace: Workspace) -> bool | None:
        """Whether a backend lists a model; None when its list is unknown (then the backend decides)."""
        if backend.serves_any_model:
            return True
        listed = await self.backend_models(backend, workspace)
        if listed is None:
            return None
        ids = {m["id"] for m in listed.models}
        return model in ids or f"{model}:latest" in ids

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        from . import __version__

        config = self.config
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "settings_dir": str(self.paths.root),
            "config": {"file": str(self.paths.config_file), "valid": self.config_error is None,
                       "error": self.config_error, "reloads": self.reloads,
                       "restart_needed": self.restart_needed},
            "workspaces": [
                {"name": ws.name, "has_key": ws.has_key, "key_source": ws.key_source,
                 "tools": ws.settings.tools, "root": ws.settings.root}
                for ws in config.workspaces.values()
            ],
            "secrets": secrets_status(config),
            "backends": [backend.describe() for backend in self.backends.values()],
            "model_cache": self.model_cache.status(),
            "autodetect": self.autodetect.status(config.settings.autodetect, self._detected(config)),
        }


__all__ = ["ECHO_BACKEND", "HOSTED_BACKEND", "Runtime", "UpstreamStatusError"]
