"""Each backend's upstream connections, kept across reloads: its own pool, so one cannot starve another.

A backend on loopback is served by the relay's lean HTTP/1.1 client (adapters/http1.py); any other
goes through one aiohttp session that honours proxy variables and the OS trust store
(adapters/session.py), with a per-backend bound on requests in flight. Both bounds wait at most
`upstream.pool_timeout` for a free connection.
"""

from __future__ import annotations

import aiohttp

from ..adapters import AdapterContext
from ..adapters.http1 import ConnectionPool
from ..adapters.session import Slots, make_session
from ..config.settings import UpstreamSettings


class Upstreams:
    def __init__(self, settings: UpstreamSettings) -> None:
        self._pools: dict[str, ConnectionPool] = {}
        self._slots: dict[str, Slots] = {}
        # Built from the settings at start: a new ca_bundle or max_header_bytes for remote upstreams
        # takes a restart (the loopback pools follow reloads).
        self._session: aiohttp.ClientSession | None = None
        self._session_settings = settings

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            settings = self._session_settings
            self._session = make_session(ca_bundle=settings.ca_bundle, max_header_bytes=settings.max_header_bytes)
        return self._session

    def context(self, backend: str, settings: UpstreamSettings) -> AdapterContext:
        """The backend's connections (made on first use, then kept), set to the current settings."""
        pool = self._pools.get(backend)
        if pool is None:
            pool = self._pools[backend] = ConnectionPool(limit=settings.pool_size, keepalive=60.0,
                                                         max_header_bytes=settings.max_header_bytes,
                                                         pool_timeout=settings.pool_timeout)
        pool.limit = settings.pool_size
        pool.pool_timeout = settings.pool_timeout
        pool.max_header_bytes = settings.max_header_bytes
        slots = self._slots.get(backend)
        if slots is None or slots.limit != settings.pool_size:
            slots = self._slots[backend] = Slots(settings.pool_size, settings.pool_timeout)
        slots.timeout = settings.pool_timeout
        return AdapterContext(
            pool=pool,
            connect_timeout=settings.connect_timeout,
            first_byte_timeout=settings.first_byte_timeout,
            read_timeout=settings.read_timeout,
            session=self.session,
            slots=slots,
        )

    def abort(self, reason: str) -> None:
        """End every exchange in progress on loopback pools (remote ones end when the session closes)."""
        for pool in self._pools.values():
            pool.abort(reason)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        if self._session is not None:
            await self._session.close()
