"""paths.py: one environment variable moves every file; private files are 0600 and written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs
import pytest
from llmtune_companion.config.paths import APP_NAME, HOME_ENV, Paths, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_env_variable_moves_the_settings_dir(tmp_path: Path) -> None:
    paths = Paths.from_env({HOME_ENV: str(tmp_path / "elsewhere")})
    assert paths.root == (tmp_path / "elsewhere").resolve()
    assert paths.config_file == paths.root / "config.toml"
    assert paths.secrets_file == paths.root / "secrets.json"
    assert paths.control_token_file.parent == paths.root
    assert paths.daemon_file.parent == paths.root
    assert paths.log_file.parent == paths.log_dir
    for derived in (paths.cache_dir, paths.log_dir):
        assert derived.parent == paths.root


def test_env_variable_is_expanded_and_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Paths.from_env({HOME_ENV: "~/companion"}).root == (tmp_path / "companion").resolve()
    monkeypatch.chdir(tmp_path)
    assert Paths.from_env({HOME_ENV: "relative"}).root == tmp_path.resolve() / "relative"


def test_without_the_variable_the_platform_data_dir_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    assert Paths.from_env({}).root == expected
    assert Paths.from_env({HOME_ENV: ""}).root == expected  # empty means unset
    monkeypatch.delenv(HOME_ENV, raising=False)
    assert Paths.from_env().root == expected


def test_from_env_reads_the_process_environment(home: Paths) -> None:
    # The `home` fixture sets the variable: every test runs against its own directory.
    assert Paths.from_env().root == home.root.resolve()


def test_ensure_creates_private_folders(home: Paths) -> None:
    assert not home.root.exists()
    home.ensure()
    for folder in (home.root, home.cache_dir, home.log_dir):
        assert folder.is_dir()
        assert mode(folder) & 0o077 == 0, f"{folder.name} is readable by others"
    home.ensure()  # idempotent


def test_write_private_is_owner_only_and_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "secret.json"
    write_private(target, b"first")
    assert target.read_bytes() == b"first"
    assert mode(target) == 0o600
    # An existing, world-readable file is replaced by a private one.
    os.chmod(target, 0o644)
    write_private(target, b"second")
    assert target.read_bytes() == b"second"
    assert mode(target) == 0o600
    # No temporary file is left behind.
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret.json"]


def test_write_private_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "s", b"x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "s") == 0o600
