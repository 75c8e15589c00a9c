"""Where a client finds the companion (base URL, local token) and which models to point it at."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config.paths import Paths
from ..config.settings import ECHO_BACKEND, HOSTED_BACKEND, Config, Workspace, is_loopback_host

# A model served by the machine itself from this backend is preferred for autocomplete (it is
# asked on every keystroke: paid hosted tokens, and the round trip, would be wasted on it).
PREFERRED_LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Companion:
    base_url: str  # what clients take as the OpenAI base URL: http://127.0.0.1:8742/v1
    workspace: Workspace
    running: bool


@dataclass(frozen=True, slots=True)
class ModelChoice:
    chat: list[str]
    autocomplete: str | None
    hosted: list[str]
    local: list[str]


class ConnectError(Exception):
    """The companion cannot be located or asked; the message says what to do."""


def server_url(paths: Paths, config: Config) -> tuple[str, bool]:
    """The running daemon's URL, else the one the settings say it will serve at; and whether it runs."""
    from ..cli.client import daemon_url
    from ..server import display_url

    url = daemon_url(paths)
    if url is not None:
        return url, True
    server = config.settings.server
    return display_url(server.host, server.port), False


def locate(paths: Paths, config: Config, workspace_name: str) -> Companion:
    workspace = config.workspaces.get(workspace_name)
    if workspace is None:
        raise ConnectError(f"no workspace named {workspace_name!r} (see `llmtune-companion workspace list`)")
    url, running = server_url(paths, config)
    return Companion(url + "/v1", workspace, running)


def local_backends(backends: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names of the OpenAI-speaking backends on this machine (configured, from the env, or detected)."""
    names = set()
    for backend in backends:
        url = backend.get("url")
        if backend.get("type") != "openai" or not isinstance(url, str):
            continue
        host = urlsplit(url).hostname
        if backend.get("name") not in (HOSTED_BACKEND, ECHO_BACKEND) and host and is_loopback_host(host):
            names.add(str(backend["name"]))
    return names


def choose(model_ids: list[str], local_names: set[str], *, chat: list[str] | None = None,
           autocomplete: str | None = None) -> ModelChoice:
    """Defaults from the companion's own list: the first hosted model for chat (a local one when there is
    no hosted list, `echo` when there is neither, so it works offline); a local model for autocomplete."""
    local = [m for m in model_ids if m.partition("/")[0] in local_names and "/" in m]
    hosted = [m for m in model_ids if m != ECHO_BACKEND and m not in local]
    if not chat:
        chat = [hosted[0]] if hosted else [local[0]] if local else [ECHO_BACKEND]
    if autocomplete is None and local:
        preferred = [m for m in local if m.startswith(PREFERRED_LOCAL + "/")]
        autocomplete = (preferred or local)[0]
    return ModelChoice(chat, autocomplete, hosted, local)


async def list_in_process(paths: Paths, config: Config, workspace: Workspace) -> tuple[list[str], list[dict[str, Any]]]:
    """The model ids and backends a daemon with these settings would serve (when none is running)."""
    from ..app import make_session
    from ..runtime import Runtime

    paths.ensure()
    async with make_session(config) as session:
        runtime = Runtime(paths, config, session)
        try:
            await runtime.detect_local_servers()
            models = await runtime.list_models(workspace)
            return [m["id"] for m in models], [b.describe() for b in runtime.backends.values()]
        finally:
            await runtime.aclose()


def list_running(paths: Paths, companion: Companion) -> tuple[list[str], list[dict[str, Any]]]:
    """The model ids and backends of the running daemon."""
    from ..api.control import load_control_token
    from ..cli.client import call_daemon

    root = companion.base_url.removesuffix("/v1")
    models = call_daemon(root, "/v1/models", companion.workspace.token)["data"]
    status = call_daemon(root, "/companion/v1/status", load_control_token(paths))
    return [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)], status["backends"]
