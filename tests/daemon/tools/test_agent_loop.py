"""Gate and execute modes end to end: the daemon on loopback, the hosted stand-in scripted to ask
for tools, real files in a temporary workspace, approvals resolved as a person would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import Daemon, StandIn, StartDaemon

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
README = "The launch code word is PAPAYA-42.\n"


@pytest.fixture
def workspace_root(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "README.md").write_text(README)
    return root


def config_for(root: Path, mode: str, extra: str = "") -> str:
    return f'[workspaces.default]\nroot = "{root}"\ntools = "{mode}"\n{extra}'


async def start(start_daemon: StartDaemon, standin: StandIn, root: Path, mode: str, extra: str = "") -> Daemon:
    return await start_daemon(config=config_for(root, mode, extra), env={"LLMTUNE_BASE_URL": standin.url})


def tool_messages(standin: StandIn) -> list[dict[str, Any]]:
    found = []
    for recorded in standin.api.requests:
        for message in (recorded.json or {}).get("messages", []) if isinstance(recorded.json, dict) else []:
            if message.get("role") == "tool":
                found.append(message)
    return found


async def wait_for_approval(daemon: Daemon, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            pending = daemon.runtime.approvals.pending()
            if pending:
                return pending[0]
            await asyncio.sleep(0.02)


async def test_execute_reads_file_and_answers_from_its_contents(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    standin.api.script_tool_call("read_file", {"path": "README.md"})
    reply = await daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What does README.md say?"}]
    )
    assert "PAPAYA-42" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    first = standin.api.requests[0].json
    assert isinstance(first, dict)
    # The client sent no tools: the daemon offered the five Agent tools itself.
    offered = {tool["function"]["name"] for tool in first["tools"]}
    assert offered == {"read_file", "write_file", "list_directory", "run_terminal", "search_replace"}
    results = tool_messages(standin)
    assert len(results) == 1 and "PAPAYA-42" in results[0]["content"]


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd", "link/passwd"])
async def test_execute_refuses_paths_outside_the_root(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path, escape: str
) -> None:
    (workspace_root / "link").symlink_to("/etc")
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    standin.api.script_tool_call("read_file", {"path": escape})
    reply = await daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "read the password file"}]
    )
    content = reply.choices[0].message.content or ""
    passwd = Path("/etc/passwd").read_text()
    first_line = passwd.splitlines()[0]
    assert first_line not in content
    results = tool_messages(standin)
    assert len(results) == 1
    assert first_line not in results[0]["content"]
    assert "outside" in results[0]["content"].lower() or "refused" in results[0]["content"].lower()
    assert all(first_line.encode() not in r.body for r in standin.api.requests)


async def test_execute_streams_content_tool_activity_and_done(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    standin.api.script_tool_call("read_file", {"path": "README.md"})
    stream = await daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "read it"}], stream=True
    )
    parts = []
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    text = "".join(parts)
    assert "[companion] read_file" in text  # the tool activity, as it happened
    assert "PAPAYA-42" in text  # the final answer, built on the file
    assert finish == "stop"


async def test_run_terminal_waits_for_approval_then_runs(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    standin.api.script_tool_call("run_terminal", {"command": "echo ran > out.txt"})
    chat = asyncio.create_task(daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "run it"}]))
    pending = await wait_for_approval(daemon)
    assert pending["tool"] == "run_terminal"
    assert not (workspace_root / "out.txt").exists()  # held, not run
    assert daemon.runtime.approvals.resolve(pending["id"], True, by="test")
    reply = await asyncio.wait_for(chat, 10)
    assert (workspace_root / "out.txt").read_text() == "ran\n"
    assert reply.choices[0].message.content


async def test_denied_run_terminal_is_refused_and_the_answer_completes(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    standin.api.script_tool_call("run_terminal", {"command": "touch denied.txt"})
    chat = asyncio.create_task(daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "run it"}]))
    pending = await wait_for_approval(daemon)
    daemon.runtime.approvals.resolve(pending["id"], False, reason="not today", by="test")
    reply = await asyncio.wait_for(chat, 10)
    assert not (workspace_root / "denied.txt").exists()
    results = tool_messages(standin)
    assert "denied" in results[0]["content"].lower() and "not today" in results[0]["content"]
    assert reply.choices[0].finish_reason == "stop"


async def test_unanswered_approval_times_out_as_a_refusal(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute", "[tools]\napproval_timeout = 0.3\n")
    standin.api.script_tool_call("run_terminal", {"command": "touch late.txt"})
    reply = await asyncio.wait_for(daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "run it"}]), 10)
    assert not (workspace_root / "late.txt").exists()
    assert "in time" in tool_messages(standin)[0]["content"]
    assert reply.choices[0].message.content


async def test_approved_write_can_be_undone_byte_for_byte(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    original = (workspace_root / "README.md").read_bytes()
    standin.api.script_tool_call("write_file", {"path": "README.md", "content": "overwritten\n"})
    chat = asyncio.create_task(daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "rewrite README"}]))
    pending = await wait_for_approval(daemon)
    assert "overwritten" in json.dumps(pending["preview"])  # the person sees the diff
    daemon.runtime.approvals.resolve(pending["id"], True, by="test")
    await asyncio.wait_for(chat, 10)
    assert (workspace_root / "README.md").read_text() == "overwritten\n"
    await daemon.runtime.journal.undo(workspace="default")
    assert (workspace_root / "README.md").read_bytes() == original


async def test_gate_passes_only_allowed_calls_to_the_ide(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "gate")
    standin.api.script_tool_calls([("read_file", {"path": "README.md"}), ("run_terminal", {"command": "rm -rf ."})])
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "run_terminal", "parameters": {"type": "object"}}}]
    chat = asyncio.create_task(daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "do things"}], tools=tools))  # type: ignore[arg-type]
    pending = await wait_for_approval(daemon)
    assert pending["tool"] == "run_terminal"
    daemon.runtime.approvals.resolve(pending["id"], False, reason="too dangerous", by="test")
    reply = await asyncio.wait_for(chat, 10)
    message = reply.choices[0].message
    assert [call.function.name for call in message.tool_calls or []] == ["read_file"]
    assert "refused run_terminal" in (message.content or "")
    assert reply.choices[0].finish_reason == "tool_calls"
    # Nothing ran on this machine in gate mode: the IDE runs the allowed call.
    assert (workspace_root / "README.md").read_text() == README


async def test_gate_streams_only_allowed_calls(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "gate",
                         '[workspaces.default.policy]\ndeny = ["run_terminal"]\n')
    standin.api.script_tool_calls([("run_terminal", {"command": "ls"}), ("read_file", {"path": "README.md"})])
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    stream = await daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], tools=tools, stream=True)  # type: ignore[arg-type]
    names, arguments = [], ""
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                arguments += (call.function.arguments or "") if call.function else ""
    assert names == ["read_file"]
    assert json.loads(arguments) == {"path": "README.md"}


async def test_a_request_cannot_loosen_the_workspace_mode(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    daemon = await start(start_daemon, standin, workspace_root, "execute")
    async with aiohttp.ClientSession() as session:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        async with session.post(daemon.base_url + "/chat/completions", json=body,
                                headers={**daemon.auth(), "X-Companion-Tools": "passthrough"}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "tool_mode_not_allowed"
        async with session.post(daemon.base_url + "/chat/completions", json=body,
                                headers={**daemon.auth(), "X-Companion-Tools": "yolo"}) as response:
            assert response.status == 400


async def test_execute_mode_needs_a_root(standin: StandIn, start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    with pytest.raises(openai.BadRequestError) as caught:
        await daemon.openai().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Companion-Tools": "execute"})
    assert "root" in str(caught.value)


async def test_gate_decisions_are_audited_and_published(
    standin: StandIn, start_daemon: StartDaemon, workspace_root: Path
) -> None:
    """Gate mode goes through the same authorize step as execute: one audit line and one event per call."""
    daemon = await start(start_daemon, standin, workspace_root, "gate")
    events = daemon.runtime.approvals.subscribe(replay=False)
    standin.api.script_tool_calls([("read_file", {"path": "README.md"}), ("run_terminal", {"command": "rm -rf ."})])
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "run_terminal", "parameters": {"type": "object"}}}]
    chat = asyncio.create_task(daemon.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "do things"}], tools=tools))  # type: ignore[arg-type]
    pending = await wait_for_approval(daemon)
    daemon.runtime.approvals.resolve(pending["id"], False, reason="too dangerous", by="user:test")
    await asyncio.wait_for(chat, 10)
    lines = [json.loads(line) for line in (daemon.paths.log_dir / "tools-audit.jsonl").read_text().splitlines()]
    assert [(line["tool"], line["decision"], line["mode"]) for line in lines] == [
        ("read_file", "allow", "gate"), ("run_terminal", "deny", "gate")]
    assert lines[1]["decided_by"] == "user:test" and lines[1]["reason"] == "too dangerous"
    assert lines[1]["approval_id"] == pending["id"]
    gated = []
    while not events.queue.empty():
        event = events.queue.get_nowait()
        if event["type"] == "tool.gated":
            gated.append((event["tool"], event["decision"]))
    assert gated == [("read_file", "allow"), ("run_terminal", "deny")]
