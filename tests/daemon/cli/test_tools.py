"""The tool commands of the CLI: workspace set/add --root/--tools, undo, approvals/approve/deny."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from llmtune_companion.config.settings import load_config
from llmtune_companion.tools import ToolCall, ToolPolicySettings, ToolRunner

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.daemon.cli import test_main as test_cli
from tests.daemon.cli.test_main import CLI, Served

# The fixtures of the main CLI tests: `cli` runs commands against the test's settings directory,
# `servers` stops every `serve` a test starts.
cli = test_cli.cli
servers = test_cli.servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_help_on_the_tool_commands(cli: CLI) -> None:
    for command, option in ((("approvals",), "--json"), (("approve",), "--remember"), (("deny",), "--reason"),
                            (("undo",), "--list"), (("workspace", "set"), "--tools"),
                            (("workspace", "add"), "--root")):
        result = await cli.inproc(*command, "--help")
        assert result.code == 0 and result.out.startswith(f"usage: llmtune-companion {' '.join(command)}")
        assert option in result.out, command


async def test_workspace_set_and_add_with_root_and_tools(cli: CLI, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    result = await cli.run("workspace", "set", "default", "--root", str(project), "--tools", "execute")
    assert result.code == 0, result.err
    assert "execute" in result.out
    table = tomllib.loads(cli.paths.config_file.read_text())["workspaces"]["default"]
    assert table == {"root": str(project.resolve()), "tools": "execute"}

    result = await cli.inproc("workspace", "add", "other", "--root", str(project), "--tools", "gate")
    assert result.code == 0, result.err
    other = load_config(cli.paths).workspaces["other"]
    assert (other.settings.root, other.settings.tools) == (str(project.resolve()), "gate")
    assert other.token  # a real workspace, with its local token
    listed = await cli.inproc("workspace", "list")
    assert f"tools gate in {project.resolve()}" in listed.out
    rows = {row["name"]: row for row in orjson.loads((await cli.inproc("workspace", "list", "--json")).out)}
    assert (rows["default"]["tools"], rows["default"]["root"]) == ("execute", str(project.resolve()))

    before = cli.paths.config_file.read_text()
    missing = await cli.inproc("workspace", "set", "other", "--root", str(tmp_path / "missing"))
    assert missing.code == 2 and "is not a directory" in missing.err
    bad_mode = await cli.inproc("workspace", "set", "other", "--tools", "yolo")
    assert bad_mode.code == 2 and "invalid choice" in bad_mode.err
    nothing = await cli.inproc("workspace", "set", "other")
    assert nothing.code == 2 and "nothing to set" in nothing.err
    no_root = await cli.inproc("workspace", "add", "third", "--tools", "execute")
    assert no_root.code == 2 and "needs root" in no_root.err
    assert cli.paths.config_file.read_text() == before  # refused edits leave the file alone
    assert "third" not in load_config(cli.paths).workspaces
    cli.assert_no_secret_printed()


async def test_undo_in_process_restores_byte_for_byte(cli: CLI, tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    original = b"first\r\n\x00\xfe binary tail"
    (root / "data.txt").write_bytes(original)
    (root / "data.txt").chmod(0o640)
    cli.paths.ensure()
    runner = ToolRunner.for_paths(cli.paths, root, policy=ToolPolicySettings(allow=("write_file",)))
    first = await runner.run("default", ToolCall("write_file", {"path": "data.txt", "content": "changed\n"}))
    second = await runner.run("default", ToolCall("write_file", {"path": "made.txt", "content": "new\n"}))
    assert first.ok and second.ok

    listing = await cli.run("undo", "--list", "--json")
    assert listing.code == 0, listing.err
    assert [e["path"] for e in orjson.loads(listing.out)] == ["made.txt", "data.txt"]
    assert "data.txt" in (await cli.inproc("undo", "--list")).out

    named = await cli.run("undo", first.meta["undo_id"])
    assert named.code == 0, named.err
    assert "data.txt" in named.out
    assert (root / "data.txt").read_bytes() == original
    assert (root / "data.txt").stat().st_mode & 0o777 == 0o640
    latest = await cli.run("undo")
    assert latest.code == 0 and "made.txt" in latest.out
    assert not (root / "made.txt").exists()

    again = await cli.run("undo")
    assert again.code == 1 and "nothing to undo" in again.err
    bogus = await cli.inproc("undo", "not-an-id")
    assert bogus.code == 1 and "not an undo id" in bogus.err


async def test_approvals_against_a_running_daemon(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    not_running = await cli.inproc("approvals")
    assert not_running.code == 3 and "not running" in not_running.err

    served = await cli.serve("--port", str(free_port()), log=tmp_path / "serve.log")
    servers.append(served)
    listed = await cli.run("approvals", "--json")
    assert listed.code == 0, listed.err
    assert orjson.loads(listed.out) == []
    assert "no approvals pending" in (await cli.inproc("approvals")).out

    approve = await cli.run("approve", "apr_unknown", "--remember")
    assert approve.code == 1
    assert "no pending approval 'apr_unknown'" in approve.err
    deny = await cli.inproc("deny", "apr_unknown", "--reason", "no")
    assert deny.code == 1 and "no pending approval" in deny.err

    # undo goes through the daemon when one runs.
    through = await cli.inproc("undo", "--list", "--json")
    assert through.code == 0 and orjson.loads(through.out) == []
    nothing = await cli.inproc("undo")
    assert nothing.code == 1 and "cannot undo: nothing to undo" in nothing.err
    assert await served.stop() == 0
    cli.assert_no_secret_printed()


async def _pending_ids(cli: CLI) -> list[str]:
    listed = await cli.run("approvals", "--json")
    assert listed.code == 0, listed.err
    return [item["id"] for item in orjson.loads(listed.out)]


async def _chat_waiting_for_approval(cli: CLI, served: Served, command: str) -> tuple[asyncio.Task[Any], str]:
    token = load_config(cli.paths, cli.env).workspaces["default"].token
    body = {"model": "meta-llama/Llama-3.3-70B-Instruct", "messages": [{"role": "user", "content": "run it"}]}

    async def chat() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.post(
            served.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
            return dict(await response.json())

    task = asyncio.create_task(chat())
    async with asyncio.timeout(15):
        while not (ids := await _pending_ids(cli)):
            await asyncio.sleep(0.1)
    return task, ids[0]


async def test_cli_approve_and_deny_real_pending_calls(
    cli: CLI, servers: list[Served], standin: StandIn, tmp_path: Path
) -> None:
    """The done-criterion end to end: run_terminal waits; `approve ID` runs it; `deny ID` refuses it."""
    root = tmp_path / "project"
    root.mkdir()
    cli.env["LLMTUNE_BASE_URL"] = standin.url
    cli.paths.ensure()
    cli.paths.config_file.write_text(f'[workspaces.default]\nroot = "{root}"\ntools = "execute"\n')
    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY + "\n")).code == 0
    served = await cli.serve("--port", str(free_port()), log=tmp_path / "serve.log")
    servers.append(served)

    standin.api.script_tool_call("run_terminal", {"command": "echo approved > approved.txt"})
    task, approval = await _chat_waiting_for_approval(cli, served, "approved")
    assert not (root / "approved.txt").exists()
    approved = await cli.run("approve", approval)
    assert approved.code == 0, approved.err
    reply = await asyncio.wait_for(task, 15)
    assert (root / "approved.txt").read_text() == "approved\n"
    assert reply["choices"][0]["finish_reason"] == "stop"

    standin.api.script_tool_call("run_terminal", {"command": "echo denied > denied.txt"})
    task, approval = await _chat_waiting_for_approval(cli, served, "denied")
    denied = await cli.run("deny", approval, "--reason", "not now")
    assert denied.code == 0, denied.err
    reply = await asyncio.wait_for(task, 15)
    assert not (root / "denied.txt").exists()
    assert reply["choices"][0]["message"]["content"]  # a complete answer all the same
    tool_results = [m["content"] for r in standin.api.requests if isinstance(r.json, dict)
                    for m in r.json.get("messages", []) if m.get("role") == "tool"]
    assert any("not now" in text for text in tool_results)
    assert await served.stop() == 0
    cli.assert_no_secret_printed()
