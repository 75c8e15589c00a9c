"""Where the running daemon listens and a workspace's local token, both read from the settings
directory (LLMTUNE_COMPANION_HOME moves it), so a client on the user's machine needs no configuration."""

from __future__ import annotations

from ..cli.client import daemon_url
from ..config.paths import Paths
from ..config.settings import ConfigError, SecretsStore
from .types import LLMClientError


def find_daemon(paths: Paths) -> str:
    url = daemon_url(paths)
    if url is None:
        raise LLMClientError(None, "daemon_not_running",
                             f"no companion daemon is running for {paths.root}: start it with "
                             "`llmtune-companion serve`, or pass base_url=")
    return url


def find_token(paths: Paths, workspace: str) -> str:
    try:
        stored = SecretsStore(paths.secrets_file).read()["workspaces"]
    except ConfigError as exc:
        raise LLMClientError(None, "token_unreadable", f"the local token cannot be read: {exc}") from None
    token = stored.get(workspace, {}).get("token")
    if not isinstance(token, str) or not token:
        raise LLMClientError(None, "unknown_workspace",
                             f"workspace {workspace!r} has no local token in {paths.root}: create it with "
                             f"`llmtune-companion workspace add {workspace}`, or pass token=")
    return token
