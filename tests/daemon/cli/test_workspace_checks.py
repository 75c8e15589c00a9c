"""`workspace` refuses what would surprise a person later: typos, the wrong kind of key, odd roots."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
import tomllib
from pathlib import Path

from llmtune_companion.config.settings import load_config

from tests.conftest import WORKSPACE_KEY
from tests.daemon.cli import test_main as test_cli
from tests.daemon.cli.test_main import CLI
from tests.daemon.test_logs import assert_same_secret

cli = test_cli.cli


async def test_set_refuses_an_unknown_workspace_unless_create(cli: CLI, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    typo = await cli.inproc("workspace", "set", "ghost", "--root", str(project))
    assert typo.code == 1 and "no workspace named 'ghost'" in typo.err and "--create" in typo.err
    assert "ghost" not in load_config(cli.paths).workspaces
    created = await cli.inproc("workspace", "set", "ghost", "--create", "--root", str(project))
    assert created.code == 0, created.err
    assert load_config(cli.paths).workspaces["ghost"].settings.root == str(project.resolve())
    # Known workspaces need no --create: default always, and one added before.
    assert (await cli.inproc("workspace", "set", "default", "--root", str(project))).code == 0


async def test_root_empty_clears_it_and_the_settings_dir_is_refused(cli: CLI, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    assert (await cli.inproc("workspace", "set", "default", "--root", str(project))).code == 0
    cleared = await cli.inproc("workspace", "set", "default", "--root", "")
    assert cleared.code == 0, cleared.err
    assert load_config(cli.paths).workspaces["default"].settings.root is None  # not the current directory
    assert "root" not in tomllib.loads(cli.paths.config_file.read_text())["workspaces"]["default"]
    for inside in (cli.paths.root, cli.paths.cache_dir):
        refused = await cli.inproc("workspace", "set", "default", "--root", str(inside))
        assert refused.code == 2 and "the companion's own settings directory" in refused.err, refused.err
    # Clearing the root of an execute workspace: plain words, no pydantic tuple.
    assert (await cli.inproc("workspace", "set", "default", "--root", str(project), "--tools", "execute")).code == 0
    stuck = await cli.inproc("workspace", "set", "default", "--root", "")
    assert stuck.code == 2 and "config.toml: workspaces.default: tools = 'execute' needs root" in stuck.err
    assert "Value error" not in stuck.err and "('workspaces'" not in stuck.err


async def test_keys_that_do_not_look_like_llmtune_keys_are_refused(cli: CLI) -> None:
    local_token = load_config(cli.paths).workspaces["default"].token
    for key, reason in (("hello", "starts with 'sk_'"), (local_token, "a token this companion made"),
                        ("sk_with space", "spaces")):
        result = await cli.inproc("workspace", "add", "team", "--key-stdin", stdin=key + "\n")
        assert result.code == 2 and reason in result.err and "--force" in result.err, result.err
        assert key not in result.err
        assert "team" not in load_config(cli.paths).workspaces
    forced = await cli.inproc("workspace", "add", "team", "--key-stdin", "--force", stdin="hello\n")
    assert forced.code == 0 and load_config(cli.paths).workspaces["team"].has_key
    good = await cli.inproc("workspace", "add", "team", "--key-stdin", stdin=WORKSPACE_KEY + "\n")
    assert good.code == 0
    assert_same_secret(load_config(cli.paths).workspaces["team"].api_key, WORKSPACE_KEY, "the stored key")


def test_key_typed_on_a_terminal_is_not_echoed(cli: CLI) -> None:
    """A real pseudo-terminal: the prompt appears, the typed key does not."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        argv = [sys.executable, "-m", "llmtune_companion", "workspace", "add", "default", "--key-stdin"]
        os.execve(sys.executable, argv, cli.env)  # noqa: S606 (an argv list, no shell)
    output = b""
    deadline = time.monotonic() + 30

    def read_until(marker: bytes) -> None:
        nonlocal output
        while marker not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    return

    try:
        read_until(b"input hidden")
        assert b"LLMTune key (sk_..., input hidden" in output
        os.write(fd, WORKSPACE_KEY.encode() + b"\n")
        read_until(b"saved")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    assert WORKSPACE_KEY.encode() not in output, "the key was echoed to the terminal"
    assert b"workspace 'default' saved" in output
    assert_same_secret(load_config(cli.paths).workspaces["default"].api_key, WORKSPACE_KEY, "the typed key")
