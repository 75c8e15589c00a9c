from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from llmtune_companion.tools import Executor, Sandbox, ToolLimits, ToolResult, scrub_environment

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell and process groups")


async def run(executor: Executor, name: str, **arguments: Any) -> ToolResult:
    return await executor.execute({"name": name, "arguments": arguments})


@pytest.fixture
def executor(sandbox: Sandbox, limits: ToolLimits) -> Executor:
    return Executor(sandbox, limits)


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def read_pid(path: Path) -> int:
    for _ in range(100):
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError(f"{path} was not written")


# ---- read_file -----------------------------------------------------------------------------------


async def test_read_file(executor: Executor) -> None:
    result = await run(executor, "read_file", path="src/main.py")
    assert result.ok
    assert result.content == "def main():\n    return 1\n"
    assert result.meta["bytes"] == len(result.content)
    assert "duration_ms" in result.meta


async def test_read_file_size_limit(sandbox: Sandbox, root: Path) -> None:
    (root / "big.txt").write_text("x" * 2000)
    result = await run(Executor(sandbox, ToolLimits(max_read_bytes=1000)), "read_file", path="big.txt")
    assert not result.ok
    assert "more than the 1000 bytes read limit" in result.content
    assert result.meta["size"] == 2000


async def test_binary_files_are_refused(executor: Executor, root: Path) -> None:
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    for name in ("image.png", "latin1.txt"):
        result = await run(executor, "read_file", path=name)
        assert not result.ok
        assert result.meta["binary"] is True
        assert "not read" in result.content


async def test_read_errors_are_messages(executor: Executor) -> None:
    missing = await run(executor, "read_file", path="nope.txt")
    assert not missing.ok and "does not exist" in missing.content
    folder = await run(executor, "read_file", path="src")
    assert not folder.ok and "is a directory; use list_directory" in folder.content
    escaped = await run(executor, "read_file", path="../outside/secret.txt")
    assert not escaped.ok and escaped.meta["error"] == "sandbox"
    bad = await run(executor, "read_file", filename="a", mode="r")
    assert not bad.ok and "unknown argument 'mode'" in bad.content


# ---- write_file ----------------------------------------------------------------------------------


async def test_write_creates_parents(executor: Executor, root: Path) -> None:
    result = await run(executor, "write_file", path="a/b/c.txt", content="hello\n")
    assert result.ok and result.meta["created"] is True
    assert (root / "a" / "b" / "c.txt").read_bytes() == b"hello\n"


async def test_write_is_atomic_and_preserves_mode(executor: Executor, root: Path) -> None:
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho old\n")
    script.chmod(0o751)
    inode = script.stat().st_ino
    result = await run(executor, "write_file", path="run.sh", content="#!/bin/sh\necho new\n")
    assert result.ok and result.meta["previous_bytes"] == 19
    assert script.read_text() == "#!/bin/sh\necho new\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o751
    assert script.stat().st_ino != inode  # a new file renamed over the old one
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


async def test_a_failed_write_leaves_the_old_file_intact(executor: Executor, root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    result = await run(executor, "write_file", path="README.md", content="new content")
    assert not result.ok and "No space left" in result.content
    assert (root / "README.md").read_text() == "# demo\n"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


async def test_write_size_limit(sandbox: Sandbox, root: Path) -> None:
    result = await run(Executor(sandbox, ToolLimits(max_write_bytes=10)), "write_file", path="x", content="y" * 11)
    assert not result.ok and "write limit" in result.content
    assert not (root / "x").exists()


async def test_write_refuses_outside_and_directories(executor: Executor, outside: Path) -> None:
    escaped = await run(executor, "write_file", path=str(outside / "secret.txt"), content="pwned")
    assert not escaped.ok
    assert (outside / "secret.txt").read_text() == "outside secret\n"
    folder = await run(executor, "write_file", path="src", content="x")
    assert not folder.ok and "directory" in folder.content


# ---- search_replace ------------------------------------------------------------------------------


async def test_search_replace_unique_match_returns_a_diff(executor: Executor, root: Path) -> None:
    result = await run(executor, "search_replace", path="src/main.py", old_string="return 1", new_string="return 2")
    assert result.ok and result.meta["replacements"] == 1
    assert (root / "src" / "main.py").read_text() == "def main():\n    return 2\n"
    assert "--- a/src/main.py\n+++ b/src/main.py\n" in result.content
    assert "-    return 1\n+    return 2\n" in result.content


async def test_search_replace_missing_text(executor: Executor, root: Path) -> None:
    result = await run(executor, "search_replace", path="src/main.py", search="return 3", replace="x")
    assert not result.ok and result.meta["matches"] == 0
    assert "not found" in result.content
    assert (root / "src" / "main.py").read_text() == "def main():\n    return 1\n"
    hint = await run(executor, "search_replace", path="src/main.py", search="return 1  ", replace="x")
    assert "whitespace" in hint.content


async def test_search_replace_ambiguous_and_replace_all(executor: Executor, root: Path) -> None:
    (root / "c.py").write_text("a = 1\nb = 1\nc = 1\n")
    ambiguous = await run(executor, "search_replace", path="c.py", search="= 1", replace="= 2")
    assert not ambiguous.ok and ambiguous.meta["matches"] == 3
    assert "occurs 3 times" in ambiguous.content and "lines 1, 2, 3" in ambiguous.content
    assert (root / "c.py").read_text() == "a = 1\nb = 1\nc = 1\n"
    every = await run(executor, "search_replace", path="c.py", search="= 1", replace="= 2", replace_all=True)
    assert every.ok and every.meta["replacements"] == 3
    assert (root / "c.py").read_text() == "a = 2\nb = 2\nc = 2\n"
    assert every.content.count("\n+") == 4  # +++ header and three added lines


async def test_search_replace_keeps_windows_line_endings(executor: Executor, root: Path) -> None:
    (root / "w.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    result = await run(executor, "search_replace", path="w.txt", search="one\ntwo", replace="1\n2")
    assert result.ok
    assert (root / "w.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


async def test_preview_computes_the_diff_without_writing(executor: Executor, root: Path) -> None:
    preview = await executor.preview({"name": "search_replace",
                                      "arguments": {"path": "README.md", "search": "demo", "replace": "DEMO"}})
    assert preview.kind == "diff" and preview.error is None
    assert "-# demo\n+# DEMO\n" in preview.text
    assert (root / "README.md").read_text() == "# demo\n"
    created = await executor.preview({"name": "write_file", "arguments": {"path": "n.txt", "content": "x\n"}})
    assert created.meta["before_sha256"] is None and "+x\n" in created.text
    assert not (root / "n.txt").exists()
    command = await executor.preview({"name": "run_terminal", "arguments": {"command": "make"}})
    assert (command.kind, command.text, command.meta["cwd"]) == ("command", "make", str(root))
    failing = await executor.preview({"name": "search_replace",
                                      "arguments": {"path": "README.md", "search": "zzz", "replace": "y"}})
    assert failing.error is not None and "not found" in failing.error.content


async def test_a_file_changed_during_approval_is_not_overwritten(executor: Executor, root: Path) -> None:
    preview = await executor.preview({"name": "write_file", "arguments": {"path": "README.md", "content": "x"}})
    (root / "README.md").write_text("edited by a person\n")
    result = await executor.execute({"name": "write_file", "arguments": {"path": "README.md", "content": "x"}},
                                    expect_sha256=preview.meta["before_sha256"])
    assert not result.ok and result.meta["conflict"] is True
    assert (root / "README.md").read_text() == "edited by a person\n"


# ---- list_directory ------------------------------------------------------------------------------


async def test_list_directory_depth_and_markers(executor: Executor) -> None:
    top = await run(executor, "list_directory", path=".")
    assert top.ok
    assert top.content.splitlines() == ["./ (depth 1):", "README.md", "docs/", "src/"]
    deep = await run(executor, "list_directory", dir="src", depth=2)
    assert deep.content.splitlines() == ["src/ (depth 2):", "main.py", "pkg/", "pkg/util.py"]
    assert ".git" not in (await run(executor, "list_directory", depth=5)).content


async def test_list_directory_entry_limit(sandbox: Sandbox, root: Path) -> None:
    for index in range(30):
        (root / "docs" / f"f{index:02d}.md").write_text("x")
    result = await run(Executor(sandbox, ToolLimits(list_max_entries=10)), "list_directory", path=".", depth=3)
    assert result.ok and result.meta["truncated"] is True
    assert len(result.content.splitlines()) == 12  # header, 10 entries, note
    assert "listing stopped at 10 entries" in result.content
    # Breadth first: the top level is complete.
    assert {"README.md", "docs/", "src/"} <= set(result.content.splitlines())


# ---- run_terminal --------------------------------------------------------------------------------


@posix_only
async def test_command_exit_code_and_cwd(executor: Executor, root: Path) -> None:
    result = await run(executor, "run_terminal", command="pwd; echo oops >&2; exit 3")
    assert not result.ok
    assert result.meta["exit_code"] == 3 and result.meta["timed_out"] is False
    assert result.content.startswith(f"{root}\noops\n")
    assert "[exit code 3;" in result.content
    ok = await run(executor, "run_terminal", cmd="true")
    assert ok.ok and ok.content.startswith("(no output)")


@posix_only
async def test_stdin_is_closed(executor: Executor) -> None:
    started = time.monotonic()
    result = await run(executor, "run_terminal", command="read line; echo \"got:[$line]\"; cat")
    assert time.monotonic() - started < 2
    assert result.content.startswith("got:[]\n")


@posix_only
async def test_environment_is_scrubbed(executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMTUNE_API_KEY", "sk_live_should_not_leak_123")
    monkeypatch.setenv("LLMTUNE_COMPANION_HOME", "/somewhere")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_nope")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    monkeypatch.setenv("DB_PASSWORD", "nope")
    monkeypatch.setenv("OPENAI_API_KEY", "nope")
    monkeypatch.setenv("INNOCENT_LOOKING", "lct_0123456789abcdef")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    result = await run(executor, "run_terminal", command="env; echo \"key=[$LLMTUNE_API_KEY]\"")
    assert "key=[]" in result.content
    for name in ("LLMTUNE_API_KEY", "LLMTUNE_COMPANION_HOME", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD",
                 "OPENAI_API_KEY", "INNOCENT_LOOKING"):
        assert f"{name}=" not in result.content
    assert "sk_live" not in result.content and "lct_" not in result.content
    assert "HARMLESS_SETTING=kept" in result.content
    assert "PATH=" in result.content and "GIT_TERMINAL_PROMPT=0" in result.content
    assert scrub_environment({"MY_KEY": "1", "KEYBOARD": "us", "X_TOKEN": "2"}).get("KEYBOARD") == "us"


@posix_only
async def test_huge_output_is_capped_head_and_tail(sandbox: Sandbox) -> None:
    executor = Executor(sandbox, ToolLimits(output_head_bytes=1000, output_tail_bytes=500))
    result = await run(executor, "run_terminal",
                       command="echo START; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END")
    assert result.ok
    assert result.meta["output_bytes"] == 6 + 3_000_000 + 1 + 4
    assert result.meta["cut_bytes"] == result.meta["output_bytes"] - 1500
    assert result.content.startswith("START\nxxx")
    assert "END\n[exit code 0" in result.content
    assert f"[... {result.meta['cut_bytes']} bytes of output cut" in result.content
    assert len(result.content) < 1700


@posix_only
async def test_command_that_never_ends_is_killed_with_its_group(sandbox: Sandbox, root: Path) -> None:
    executor = Executor(sandbox, ToolLimits(command_timeout=0.5, kill_grace=0.5))
    started = time.monotonic()
    result = await run(executor, "run_terminal",
                       command="echo $$ > shell.pid; sleep 30 & echo $! > child.pid; echo waiting; sleep 30")
    elapsed = time.monotonic() - started
    assert result.meta["timed_out"] is True and not result.ok
    assert "timed out after 0.5 s" in result.content and result.content.startswith("waiting\n")
    assert 0.5 <= elapsed < 3
    assert not running(read_pid(root / "shell.pid"))
    assert not running(read_pid(root / "child.pid"))


@posix_only
async def test_processes_ignoring_sigterm_get_sigkill(sandbox: Sandbox, root: Path) -> None:
    executor = Executor(sandbox, ToolLimits(command_timeout=0.3, kill_grace=0.3))
    started = time.monotonic()
    result = await run(executor, "run_terminal", command="trap '' TERM; sleep 30 & echo $! > child.pid; wait")
    assert result.meta["timed_out"] is True
    assert time.monotonic() - started < 3
    assert not running(read_pid(root / "child.pid"))


@posix_only
async def test_child_outliving_its_parent_is_killed(executor: Executor, root: Path) -> None:
    started = time.monotonic()
    detached = await run(executor, "run_terminal", command="sleep 30 > /dev/null 2>&1 & echo $! > a.pid; echo bye")
    holding = await run(executor, "run_terminal", command="sleep 30 & echo $! > b.pid; echo bye")
    assert time.monotonic() - started < 3
    for result in (detached, holding):
        assert result.ok and result.content.startswith("bye\n") and not result.meta["timed_out"]
    assert not running(read_pid(root / "a.pid"))
    assert not running(read_pid(root / "b.pid"))


@posix_only
async def test_a_fifo_is_refused_without_blocking(executor: Executor, root: Path) -> None:
    os.mkfifo(root / "pipe")
    result = await run(executor, "read_file", path="pipe")
    assert not result.ok and "not a regular file" in result.content


@posix_only
async def test_cancelling_a_command_kills_its_group(executor: Executor, root: Path) -> None:
    task = asyncio.create_task(run(executor, "run_terminal", command="sleep 30 & echo $! > c.pid; sleep 30"))
    pid = await asyncio.to_thread(read_pid, root / "c.pid")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not running(pid):
            break
        await asyncio.sleep(0.01)
    assert not running(pid)
