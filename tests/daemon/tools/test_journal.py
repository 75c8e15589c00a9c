from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.tools import Executor, Journal, Sandbox, ToolLimits, UndoError
from llmtune_companion.tools.journal import undo_dir


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.for_paths(Paths(tmp_path / "home"))


@pytest.fixture
def executor(sandbox: Sandbox, journal: Journal) -> Executor:
    return Executor(sandbox, ToolLimits(), journal=journal)


async def call(executor: Executor, name: str, workspace: str = "default", **arguments: Any) -> None:
    result = await executor.execute({"name": name, "arguments": arguments}, workspace=workspace)
    assert result.ok, result.content
    assert result.meta["undo_id"]


async def test_undo_restores_byte_for_byte_with_mode(executor: Executor, journal: Journal, root: Path) -> None:
    original = bytes(range(1, 256)) * 3 + b"\r\n\xff\xfe tail without newline"
    (root / "data.bin").write_bytes(original)
    (root / "data.bin").chmod(0o640)
    await call(executor, "write_file", path="data.bin", content="replaced\n")
    assert (root / "data.bin").read_bytes() == b"replaced\n"
    entry = journal.list()[0]
    assert (entry.workspace, entry.path, entry.tool, entry.existed, entry.size) == (
        "default", "data.bin", "write_file", True, len(original))
    assert entry.root == str(root)
    undone = await journal.undo()
    assert undone.id == entry.id and undone.undone_at is not None
    assert (root / "data.bin").read_bytes() == original
    assert stat.S_IMODE((root / "data.bin").stat().st_mode) == 0o640
    assert journal.list() == []
    assert journal.list(include_undone=True)[0].id == entry.id


async def test_undo_of_a_created_file_removes_it(executor: Executor, journal: Journal, root: Path) -> None:
    await call(executor, "write_file", path="new/file.txt", content="fresh\n")
    entry = journal.list()[0]
    assert entry.existed is False and entry.size == 0
    await journal.undo(entry.id)
    assert not (root / "new" / "file.txt").exists()


async def test_undo_latest_first_through_a_series_of_edits(executor: Executor, journal: Journal, root: Path) -> None:
    await call(executor, "search_replace", path="src/main.py", search="return 1", replace="return 2")
    await call(executor, "search_replace", path="src/main.py", search="return 2", replace="return 3")
    await call(executor, "write_file", path="README.md", content="# changed\n")
    entries = journal.list()
    assert [entry.path for entry in entries] == ["README.md", "src/main.py", "src/main.py"]
    await journal.undo()
    assert (root / "README.md").read_text() == "# demo\n"
    await journal.undo()
    assert "return 2" in (root / "src" / "main.py").read_text()
    await journal.undo()
    assert "return 1" in (root / "src" / "main.py").read_text()
    with pytest.raises(UndoError, match="nothing to undo"):
        await journal.undo()


async def test_undo_is_per_workspace_when_asked(executor: Executor, journal: Journal, root: Path) -> None:
    await call(executor, "write_file", workspace="alpha", path="a.txt", content="a")
    await call(executor, "write_file", workspace="beta", path="b.txt", content="b")
    assert [entry.path for entry in journal.list("alpha")] == ["a.txt"]
    await journal.undo(workspace="alpha")
    assert not (root / "a.txt").exists() and (root / "b.txt").exists()
    with pytest.raises(UndoError, match="belongs to workspace 'beta'"):
        await journal.undo(journal.list("beta")[0].id, workspace="alpha")


async def test_undo_refuses_to_lose_a_later_change(executor: Executor, journal: Journal, root: Path) -> None:
    await call(executor, "write_file", path="README.md", content="by the model\n")
    (root / "README.md").write_text("then edited by a person\n")
    with pytest.raises(UndoError, match="was changed since write_file wrote it"):
        await journal.undo()
    assert (root / "README.md").read_text() == "then edited by a person\n"
    await journal.undo(force=True)
    assert (root / "README.md").read_text() == "# demo\n"
    with pytest.raises(UndoError, match="already undone"):
        await journal.undo(journal.list(include_undone=True)[0].id)


async def test_undo_refuses_a_path_that_now_escapes_the_root(executor: Executor, journal: Journal, root: Path,
                                                             outside: Path) -> None:
    await call(executor, "write_file", path="docs/guide.md", content="new guide\n")
    shutil.rmtree(root / "docs")
    (root / "docs").symlink_to(outside)
    (outside / "guide.md").write_text("outside guide\n")
    with pytest.raises(UndoError, match="symbolic link that leads outside"):
        await journal.undo(force=True)
    assert (outside / "guide.md").read_text() == "outside guide\n"


def test_bad_ids_are_refused(journal: Journal) -> None:
    for bad in ("../../etc/passwd", "nope", ""):
        with pytest.raises(UndoError, match="is not an undo id"):
            journal.get(bad)


def test_journal_files_are_private_and_pruned(tmp_path: Path, root: Path) -> None:
    journal = Journal(tmp_path / "undo", max_entries=3)
    for index in range(5):
        journal.record(workspace="w", root=root, path=f"f{index}", tool="write_file", previous=b"old", mode=0o644,
                       after=b"new")
    assert [entry.path for entry in journal.list()] == ["f4", "f3", "f2"]
    files = list((tmp_path / "undo").iterdir())
    assert len(files) == 6  # .json and .bin for each of the three
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    assert undo_dir(Paths(tmp_path)) == tmp_path / "undo"
    assert os.stat(tmp_path / "undo").st_mode & 0o077 == 0


async def test_a_failed_write_leaves_no_journal_entry(executor: Executor, journal: Journal,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    result = await executor.execute({"name": "write_file", "arguments": {"path": "README.md", "content": "x"}})
    assert not result.ok
    assert journal.list() == []
