"""What every command shares: the error that ends a command, and the settings loaded once."""

from __future__ import annotations

from ..config.paths import Paths
from ..config.settings import Config, ConfigError, load_config


class CLIError(Exception):
    """Ends a command with a message on stderr and an exit code (1 by default, 2 for bad usage or settings)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load_settings(paths: Paths) -> Config:
    try:
        return load_config(paths)
    except ConfigError as exc:
        raise CLIError(f"invalid settings: {exc}", 2) from None
