"""Shared fixtures: a fresh settings directory per test, the hosted stand-in, the real daemon.

Everything runs for real on loopback: the daemon is the app `create_app` builds, served by aiohttp;
the hosted API is the stand-in written from the seed documents; the local backend is a real
llama.cpp server (tests/support/llama_fixture.py).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from llmtune_companion.app import create_app
from llmtune_companion.appkeys import CONTROL_TOKEN, RUNTIME
from llmtune_companion.config.paths import HOME_ENV, Paths
from llmtune_companion.config.settings import ENV_API_KEY, ENV_BASE_URL, ENV_LOCAL_URL
from llmtune_companion.config.workspaces import add_workspace
from llmtune_companion.runtime import Runtime

from tests.support.hosted_standin import HostedStandIn

pytest_plugins = ["tests.support.llama_fixture"]

# The workspace key the stand-in accepts; tests assert it never leaks to a client or a log.
WORKSPACE_KEY = "sk_test_workspace_0123456789abcdef"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A fresh, empty settings directory, and no companion variables from the outer environment."""
    root = tmp_path / "companion-home"
    monkeypatch.setenv(HOME_ENV, str(root))
    for name in (ENV_API_KEY, ENV_BASE_URL, ENV_LOCAL_URL, "LLMTUNE_COMPANION_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    # Never the developer's own keychain: keys stay in the test's secrets.json unless a test starts
    # a keychain of its own (tests/support/secret_service.py).
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    return Paths(root)


@dataclass
class StandIn:
    api: HostedStandIn
    server: TestServer

    @property
    def url(self) -> str:
        """The hosted API root, as LLMTUNE_BASE_URL takes it."""
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def standin(aiohttp_server: Any) -> StandIn:
    api = HostedStandIn(api_key=WORKSPACE_KEY)
    server = await aiohttp_server(api.app)
    return StandIn(api, server)


@dataclass
class Daemon:
    server: TestServer
    app: web.Application
    paths: Paths
    token: str

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def runtime(self) -> Runtime:
        return self.app[RUNTIME]

    @property
    def control_token(self) -> str:
        return self.app[CONTROL_TOKEN]

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def openai(self, **options: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the daemon with the local token."""
        options.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.token, **options)


StartDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture
def start_daemon(home: Paths, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> StartDaemon:
    """Start the real daemon on loopback: `await start_daemon(config=..., env=..., key=...)`."""

    async def start(
        *,
        config: str = "",
        env: dict[str, str] | None = None,
        key: str | None = WORKSPACE_KEY,
        watch: bool = False,
    ) -> Daemon:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        home.ensure()
        if config:
            home.config_file.write_text(config, encoding="utf-8")
        if key is not None:
            add_workspace(home, "default", key)
        app = create_app(home, watch=watch)
        server = await aiohttp_server(app, access_log=None)
        from llmtune_companion.config.settings import load_config

        token = load_config(home).workspaces["default"].token
        return Daemon(server, app, home, token)

    return start
