"""A real workspace on disk per test: a few files, a .git directory, and a place outside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmtune_companion.tools import Sandbox, ToolLimits


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, holding a file no tool may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("outside secret\n")
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "docs").mkdir()
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    (workspace / "README.md").write_text("# demo\n")
    (workspace / "src" / "main.py").write_text("def main():\n    return 1\n")
    (workspace / "src" / "pkg" / "util.py").write_text("X = 1\n")
    (workspace / "docs" / "guide.md").write_text("guide\n")
    return workspace


@pytest.fixture
def sandbox(root: Path) -> Sandbox:
    return Sandbox(root)


@pytest.fixture
def limits() -> ToolLimits:
    """Small time limits so that process-group tests stay fast."""
    return ToolLimits(command_timeout=5.0, kill_grace=0.5)
