"""installers/install.sh from a clean HOME to a running companion, and back to nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.conftest import closed_port
from tests.support.system import require_executable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "installers" / "install.sh"
NOT_COPIED = shutil.ignore_patterns(".git", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", ".venv",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests", "benchmarks")


def test_shellcheck_is_clean() -> None:
    shellcheck = require_executable("shellcheck")
    result = subprocess.run([shellcheck, "--shell=sh", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def left_in(folder: Path) -> list[str]:
    """Files and links under `folder` (empty directories do not count)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def without_companion(path: str) -> str:
    """PATH less the folders holding a `llmtune-companion` (CI runs the suite inside an activated venv)."""
    return os.pathsep.join(d for d in path.split(os.pathsep) if d and not (Path(d) / "llmtune-companion").exists())


def test_bad_options_are_refused(tmp_path: Path) -> None:
    env = {"PATH": without_companion(os.environ["PATH"]), "HOME": str(tmp_path)}
    for args, message in ((["--method", "conda"], "--method must be uv, pipx or venv"),
                          (["--frobnicate"], "unknown option --frobnicate"),
                          (["--uninstall"], "llmtune-companion is not installed")):
        result = subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    assert left_in(tmp_path) == []


@pytest.mark.slow
def test_install_sh_from_a_checkout_then_uninstall(tmp_path: Path) -> None:
    shutil.copytree(ROOT, tmp_path / "llmtune-companion", ignore=NOT_COPIED)
    home, runtime, settings = tmp_path / "home", tmp_path / "run", tmp_path / "settings"
    for folder in (home, runtime, settings):
        folder.mkdir(mode=0o700)
    port = closed_port()  # not 8742: another companion may run on this machine
    (settings / "config.toml").write_text(f"[server]\nport = {port}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "DBUS_", "LLMTUNE_", "VIRTUAL_ENV", "PYTHON"))}
    # No systemd user manager here (an empty runtime dir): the autostart path, started in the background.
    real_home = Path(os.environ.get("HOME", "/root"))
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), LLMTUNE_COMPANION_HOME=str(settings),
               # The machine's caches and toolchains stay where they are (a build may consult rustup).
               PIP_CACHE_DIR=str(real_home / ".cache/pip"), RUSTUP_HOME=str(real_home / ".rustup"),
               CARGO_HOME=str(real_home / ".cargo"))
    venv = home / ".local/share/llmtune-companion-venv"
    try:
        # As docs/start-at-login.md shows it: a checkout by relative path.
        installed = subprocess.run(["sh", str(SCRIPT), "--method", "venv", "./llmtune-companion"], env=env,
                                   cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
        out = installed.stdout
        assert f"Installing {tmp_path}/llmtune-companion with venv" in out  # the relative path, made absolute
        assert f"base URL:  http://127.0.0.1:{port}/v1" in out
        assert "run `llmtune-companion token`" in out and "next step: llmtune-companion connect continue" in out
        assert healthz(port)
        link = home / ".local/bin/llmtune-companion"
        assert link.is_symlink() and Path(os.readlink(link)) == venv / "bin/llmtune-companion"
        # The login entry runs the installed copy, not the one running these tests.
        entry = (home / ".config/autostart/llmtune-companion.desktop").read_text()
        assert f"{venv}/bin/llmtune-companion serve" in entry
        status = subprocess.run([str(link), "service", "status", "--json"], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        report = orjson.loads(status.stdout)
        assert report["installed"] and report["running"] and report["enabled"], report

        removed = subprocess.run(["sh", str(SCRIPT), "--uninstall", "--purge", "--yes"], env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "LLMTune Companion removed." in removed.stdout
        assert not healthz(port)
        assert left_in(home) == [] and not settings.exists()
    finally:
        if (settings / "daemon.json").exists():  # a failed run must not leave a daemon behind
            pid = orjson.loads((settings / "daemon.json").read_bytes())["pid"]
            subprocess.run(["kill", "-9", str(pid)], check=False)
