"""The one settings directory: every file the companion keeps lives under it.

Like simonw/llm's user dir, one environment variable moves all of it, so each test runs against a
fresh temporary directory and nothing touches the user's real settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

HOME_ENV = "LLMTUNE_COMPANION_HOME"
APP_NAME = "llmtune-companion"


@dataclass(frozen=True, slots=True)
class Paths:
    root: Path

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        override = env.get(HOME_ENV)
        if override:
            return cls(Path(override).expanduser().resolve())
        return cls(Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)))

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    @property
    def control_token_file(self) -> Path:
        return self.root / "control-token"

    @property
    def daemon_file(self) -> Path:
        """Where a running daemon says where it listens (no secrets in it)."""
        return self.root / "daemon.json"

    @property
    def lock_file(self) -> Path:
        """Held locked by the daemon serving this directory: one daemon per settings directory."""
        return self.root / "daemon.lock"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "companion.log"

    def ensure(self) -> None:
        for folder in (self.root, self.cache_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
