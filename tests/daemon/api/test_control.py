"""The control API's tool routes on the real daemon: approvals, the event stream and undo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion.tools import ToolCall, ToolPolicySettings, ToolRunner
from llmtune_companion.tools.approvals import Decision

from tests.conftest import Daemon, StartDaemon

TIMEOUT = 10.0


@pytest.fixture
async def daemon(start_daemon: StartDaemon) -> Daemon:
    return await start_daemon()


@pytest.fixture
async def control(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth(daemon.control_token)) as session:
        yield session


def hold(daemon: Daemon, name: str = "run_terminal", **arguments: Any) -> asyncio.Task[Decision]:
    """A tool call parked for approval, as the agent loop parks one."""
    call = ToolCall(name, arguments or {"command": "make test"}, id="call_1")
    preview = {"command": arguments.get("command", "make test"), "cwd": "."}
    return asyncio.create_task(daemon.runtime.approvals.request("default", call, preview))


async def until_pending(daemon: Daemon, count: int = 1) -> list[dict[str, Any]]:
    async with asyncio.timeout(TIMEOUT):
        while len(pending := daemon.runtime.approvals.pending()) < count:
            await asyncio.sleep(0.01)
    return pending


async def test_control_routes_need_the_control_token(daemon: Daemon) -> None:
    async with aiohttp.ClientSession(daemon.url) as session:
        for method, path in (("GET", "/companion/v1/approvals"), ("POST", "/companion/v1/approvals/x"),
                             ("GET", "/companion/v1/events"), ("GET", "/companion/v1/undo"),
                             ("POST", "/companion/v1/undo")):
            async with session.request(method, path, headers=daemon.auth()) as response:  # a workspace token
                assert response.status == 401, path
                assert (await response.json())["error"]["code"] == "invalid_token"


async def test_list_and_allow_an_approval(daemon: Daemon, control: aiohttp.ClientSession) -> None:
    async with control.get("/companion/v1/approvals") as response:
        assert response.status == 200 and await response.json() == {"approvals": []}
    task = hold(daemon, command="make test")
    await until_pending(daemon)
    async with control.get("/companion/v1/approvals") as response:
        [item] = (await response.json())["approvals"]
    assert item["id"].startswith("apr_")
    assert (item["workspace"], item["tool"], item["arguments"], item["call_id"]) == (
        "default", "run_terminal", {"command": "make test"}, "call_1")
    assert item["preview"]["command"] == "make test"
    assert item["expires_at"] > item["created_at"]

    async with control.post(f"/companion/v1/approvals/{item['id']}",
                            json={"decision": "allow", "remember": True}) as response:
        assert response.status == 200
        body = await response.json()
    assert (body["id"], body["decision"], body["remember"]) == (item["id"], "allow", True)
    decision = await asyncio.wait_for(task, TIMEOUT)
    assert (decision.allow, decision.remember, decision.by, decision.approval_id) == (True, True, "user", item["id"])
    async with control.get("/companion/v1/approvals") as response:
        assert (await response.json())["approvals"] == []
    # Decided: a second answer finds nothing.
    async with control.post(f"/companion/v1/approvals/{item['id']}", json={"decision": "deny"}) as response:
        assert response.status == 404


async def test_deny_with_a_reason(daemon: Daemon, control: aiohttp.ClientSession) -> None:
    task = hold(daemon)
    [item] = await until_pending(daemon)
    async with control.post(f"/companion/v1/approvals/{item['id']}",
                            json={"decision": "deny", "remember": True, "reason": "not now"}) as response:
        assert response.status == 200
        assert (await response.json())["remember"] is False  # remembering only applies to an allow
    decision = await asyncio.wait_for(task, TIMEOUT)
    assert (decision.allow, decision.remember, decision.reason) == (False, False, "not now")


async def test_unknown_approval_is_404_and_bad_bodies_are_400(daemon: Daemon,
                                                              control: aiohttp.ClientSession) -> None:
    async with control.post("/companion/v1/approvals/apr_nope", json={"decision": "allow"}) as response:
        assert response.status == 404
        error = (await response.json())["error"]
    assert error["code"] == "approval_not_found" and error["type"] == "not_found_error"
    assert "apr_nope" in error["message"]

    task = hold(daemon)
    [item] = await until_pending(daemon)
    path = f"/companion/v1/approvals/{item['id']}"
    for body in (b"", b"not json", b"[1]", orjson.dumps({"decision": "maybe"}), orjson.dumps({}),
                 orjson.dumps({"decision": "allow", "remember": "yes"}),
                 orjson.dumps({"decision": "deny", "reason": 3})):
        async with control.post(path, data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, body
            assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert daemon.runtime.approvals.get(item["id"]) is not None  # still pending after the bad requests
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def read_event(content: aiohttp.StreamReader) -> tuple[str, dict[str, Any]]:
    """The next `event:`/`data:` pair, skipping comment lines."""
    kind, data = "", b""
    async with asyncio.timeout(TIMEOUT):
        while True:
            line = await content.readline()
            assert line, "the event stream ended"
            line = line.rstrip(b"\n")
            if line.startswith(b":"):
                continue
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
            elif not line and data:
                return kind, orjson.loads(data)


async def test_event_stream_delivers_pending_and_resolved(daemon: Daemon, control: aiohttp.ClientSession) -> None:
    async with control.get("/companion/v1/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert (await asyncio.wait_for(response.content.readline(), TIMEOUT)).startswith(b":")
        task = hold(daemon, command="pytest -q")
        kind, event = await read_event(response.content)
        assert kind == event["type"] == "approval.pending"
        approval = event["approval"]
        assert (approval["tool"], approval["arguments"]) == ("run_terminal", {"command": "pytest -q"})
        async with control.post(f"/companion/v1/approvals/{approval['id']}",
                                json={"decision": "deny", "reason": "no"}) as answer:
            assert answer.status == 200
        kind, event = await read_event(response.content)
        assert kind == "approval.resolved"
        assert (event["id"], event["allow"], event["reason"], event["by"]) == (approval["id"], False, "no", "user")
        assert isinstance(event["time"], float)
        assert not (await asyncio.wait_for(task, TIMEOUT)).allow
    # The client went away: the daemon notices and drops the subscription.
    async with asyncio.timeout(TIMEOUT):
        while daemon.runtime.approvals._subscribers:
            await asyncio.sleep(0.05)


async def test_event_stream_replays_pending_and_sends_heartbeats(daemon: Daemon, control: aiohttp.ClientSession,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune_companion.api import control as control_module

    monkeypatch.setattr(control_module, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(control_module, "DISCONNECT_POLL_SECONDS", 0.05)
    task = hold(daemon)
    [item] = await until_pending(daemon)
    async with control.get("/companion/v1/events") as response:
        kind, event = await read_event(response.content)
        assert (kind, event["approval"]["id"]) == ("approval.pending", item["id"])
        async with asyncio.timeout(TIMEOUT):
            while (await response.content.readline()) != b": ping\n":
                pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_list_and_undo_changes(daemon: Daemon, control: aiohttp.ClientSession, tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    original = b"line one\r\nline two\x00\xff\n"
    (root / "a.txt").write_bytes(original)
    runner = ToolRunner.for_paths(daemon.paths, root, policy=ToolPolicySettings(allow=("write_file",)))
    first = await runner.run("default", ToolCall("write_file", {"path": "a.txt", "content": "changed\n"}))
    second = await runner.run("default", ToolCall("write_file", {"path": "new.txt", "content": "new\n"}))
    assert first.ok and second.ok, (first.content, second.content)

    async with control.get("/companion/v1/undo") as response:
        entries = (await response.json())["entries"]
    assert [(e["path"], e["existed"]) for e in entries] == [("new.txt", False), ("a.txt", True)]
    assert entries[1]["id"] == first.meta["undo_id"]

    # A named entry, then the latest remaining one (no body at all).
    async with control.post("/companion/v1/undo", json={"id": first.meta["undo_id"]}) as response:
        assert response.status == 200
        assert (await response.json())["undone"]["path"] == "a.txt"
    assert (root / "a.txt").read_bytes() == original
    async with control.post("/companion/v1/undo") as response:
        assert response.status == 200
        assert (await response.json())["undone"]["path"] == "new.txt"
    assert not (root / "new.txt").exists()

    async with control.get("/companion/v1/undo") as response:
        assert (await response.json())["entries"] == []
    async with control.get("/companion/v1/undo", params={"all": "1"}) as response:
        assert len((await response.json())["entries"]) == 2
    async with control.post("/companion/v1/undo") as response:
        assert response.status == 409
        error = (await response.json())["error"]
    assert error["code"] == "undo_failed" and "nothing to undo" in error["message"]
    async with control.post("/companion/v1/undo", json={"id": first.meta["undo_id"]}) as response:
        assert response.status == 409  # already undone
    async with control.post("/companion/v1/undo", json={"id": 5}) as response:
        assert response.status == 400
