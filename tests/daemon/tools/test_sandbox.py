from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from llmtune_companion.tools import Executor, PathChangedError, ResolvedPath, Sandbox, SandboxError
from llmtune_companion.tools.sandbox import HAVE_DIR_FD

pytestmark = pytest.mark.skipif(not HAVE_DIR_FD, reason="the race tests need openat-style dir_fd support")


def test_relative_and_absolute_paths_inside_the_root(sandbox: Sandbox, root: Path) -> None:
    target = sandbox.resolve("src/main.py")
    assert target.display == "src/main.py"
    assert target.real == root / "src" / "main.py"
    assert sandbox.resolve(str(root / "src" / "main.py")).display == "src/main.py"
    assert sandbox.resolve("src/../README.md").display == "README.md"
    assert sandbox.resolve(".").is_root
    assert sandbox.resolve("./").display == "."
    # Not existing yet is fine (write_file creates it).
    assert sandbox.resolve("new/dir/file.txt").display == "new/dir/file.txt"


@pytest.mark.parametrize("path", ["../outside/secret.txt", "src/../../outside/secret.txt", "..", "src/../.."])
def test_dot_dot_escapes_are_refused(sandbox: Sandbox, path: str) -> None:
    with pytest.raises(SandboxError, match="leads outside the workspace"):
        sandbox.resolve(path)


def test_absolute_paths_elsewhere_are_refused(sandbox: Sandbox, outside: Path) -> None:
    for path in ("/etc/passwd", str(outside / "secret.txt"), "/"):
        with pytest.raises(SandboxError, match="is outside the workspace"):
            sandbox.resolve(path)


@pytest.mark.parametrize("path", ["", "~/.ssh/id_rsa", "a\x00b"])
def test_odd_paths_are_refused(sandbox: Sandbox, path: str) -> None:
    with pytest.raises(SandboxError):
        sandbox.resolve(path)


def test_symlink_to_etc_is_refused(sandbox: Sandbox, root: Path) -> None:
    (root / "etc").symlink_to("/etc")
    (root / "passwd").symlink_to("/etc/passwd")
    for path in ("etc/passwd", "passwd", "etc", "etc/../etc/hosts"):
        with pytest.raises(SandboxError, match="symbolic link that leads outside"):
            sandbox.resolve(path)


def test_symlink_in_a_middle_component_is_refused(sandbox: Sandbox, root: Path, outside: Path) -> None:
    (root / "src" / "vendor").symlink_to(outside)
    with pytest.raises(SandboxError, match="symbolic link"):
        sandbox.resolve("src/vendor/secret.txt")


def test_symlinks_that_stay_inside_are_followed(sandbox: Sandbox, root: Path) -> None:
    (root / "latest.py").symlink_to("src/main.py")
    (root / "code").symlink_to("src")
    assert sandbox.resolve("latest.py").display == "src/main.py"
    assert sandbox.resolve("code/pkg/util.py").display == "src/pkg/util.py"


def test_root_given_through_a_symlink(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "link-to-ws"
    link.symlink_to(root)
    sandbox = Sandbox(link)
    assert sandbox.root == root
    assert sandbox.resolve(str(link / "README.md")).display == "README.md"


def test_protected_paths_are_flagged(root: Path, tmp_path: Path) -> None:
    companion = root / ".companion-home"
    companion.mkdir()
    sandbox = Sandbox(root, companion_dir=companion)
    assert sandbox.resolve(".git/config").protected == "git"
    assert sandbox.resolve(".git").protected == "git"
    assert sandbox.resolve(".GIT/HEAD").protected == "git"
    assert sandbox.resolve(".env").protected == "env"
    assert sandbox.resolve("config/.env.local").protected == "env"
    assert sandbox.resolve(".companion-home/secrets.json").protected == "companion"
    assert sandbox.resolve("src/main.py").protected is None
    # A link named innocently but leading into .git is still protected.
    (root / "hooks").symlink_to(".git")
    assert sandbox.resolve("hooks/config").protected == "git"


# ---- the check-then-use race: a file swapped for a symlink between resolve() and open() ----------


def test_final_component_swapped_for_a_symlink_after_the_check(sandbox: Sandbox, root: Path, outside: Path) -> None:
    target = sandbox.resolve("README.md")
    (root / "README.md").unlink()
    (root / "README.md").symlink_to(outside / "secret.txt")
    with pytest.raises(PathChangedError, match="changed while it was being accessed"):
        sandbox.open_file(target)


def test_directory_swapped_for_a_symlink_after_the_check(sandbox: Sandbox, root: Path, outside: Path) -> None:
    target = sandbox.resolve("src/pkg/util.py")
    (outside / "pkg").mkdir()
    (outside / "pkg" / "util.py").write_text("outside\n")
    shutil.rmtree(root / "src")
    (root / "src").symlink_to(outside)
    with pytest.raises(PathChangedError):
        sandbox.open_file(target)
    with pytest.raises(PathChangedError):
        sandbox.write_atomic(target, b"pwned\n")
    assert (outside / "pkg" / "util.py").read_text() == "outside\n"


def _swap_after_resolve(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, name: str, link_to: Path) -> None:
    """Make the race deterministic: replace `name` with a symlink right after every resolution."""
    original = sandbox.resolve

    def resolve_then_swap(path: str) -> ResolvedPath:
        resolved = original(path)
        victim = sandbox.root / name
        if not victim.is_symlink():
            if victim.is_dir():
                shutil.rmtree(victim)
            else:
                victim.unlink()
            victim.symlink_to(link_to)
        return resolved

    monkeypatch.setattr(sandbox, "resolve", resolve_then_swap)


async def test_executor_read_refuses_a_file_swapped_between_check_and_use(
    sandbox: Sandbox, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _swap_after_resolve(monkeypatch, sandbox, "README.md", outside / "secret.txt")
    result = await Executor(sandbox).execute({"name": "read_file", "arguments": {"path": "README.md"}})
    assert not result.ok
    assert result.meta["error"] == "path_changed"
    assert "outside secret" not in result.content


async def test_executor_write_refuses_a_file_swapped_between_check_and_use(
    sandbox: Sandbox, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _swap_after_resolve(monkeypatch, sandbox, "README.md", outside / "secret.txt")
    result = await Executor(sandbox).execute({"name": "write_file", "arguments": {"path": "README.md", "content": "x"}})
    assert not result.ok and result.meta["error"] == "path_changed"
    assert (outside / "secret.txt").read_text() == "outside secret\n"


async def test_executor_write_refuses_a_directory_swapped_between_check_and_use(
    sandbox: Sandbox, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _swap_after_resolve(monkeypatch, sandbox, "docs", outside)
    result = await Executor(sandbox).execute(
        {"name": "write_file", "arguments": {"path": "docs/secret.txt", "content": "pwned"}})
    assert not result.ok and result.meta["error"] == "path_changed"
    assert (outside / "secret.txt").read_text() == "outside secret\n"
    listing = await Executor(sandbox).execute({"name": "list_directory", "arguments": {"path": "docs"}})
    assert not listing.ok and "secret.txt" not in listing.content


def test_list_tree_does_not_follow_links_or_enter_git(sandbox: Sandbox, root: Path, outside: Path) -> None:
    (root / "out").symlink_to(outside)
    entries, truncated = sandbox.list_tree(sandbox.resolve("."), depth=5, max_entries=100)
    paths = [entry.path for entry in entries]
    assert not truncated
    assert ".git" not in paths and not any(p.startswith(".git/") for p in paths)
    assert "out" in paths and not any(p.startswith("out/") for p in paths)
    assert next(e for e in entries if e.path == "out").target == str(outside)
