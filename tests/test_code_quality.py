"""ruff and mypy (strict) stay clean: part of the test command, so CI holds every change to it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where each code folder lives inside the installed package (setup.py's mapping).
LAYOUT = {"": "daemon", "adapters": "adapters", "tray": "tray", "installers": "installers"}
# Every folder of Python code in the repository, linted as it is.
LINTED = ["daemon", "adapters", "tray", "installers", "benchmarks", "tests", "setup.py"]


def installed_layout(target: Path) -> Path:
    """Lay the folders out as the wheel does, so mypy resolves imports across them."""
    package = target / "llmtune_companion"
    for sub, folder in LAYOUT.items():
        source = ROOT / folder
        if not source.is_dir():
            continue
        shutil.copytree(source, package / sub if sub else package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", *(f for f in LAYOUT.values() if f != "daemon"))
                        if not sub else
                        shutil.ignore_patterns("__pycache__"))
    return package


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *(p for p in LINTED if (ROOT / p).exists())],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    installed_layout(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "llmtune_companion"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    # Report paths relative to the repository, not the temporary copy.
    output = (result.stdout + result.stderr).replace(str(tmp_path / "llmtune_companion") + "/", "")
    assert result.returncode == 0, output
