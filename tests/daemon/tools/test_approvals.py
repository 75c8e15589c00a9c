from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llmtune_companion.tools import ApprovalBroker, Decision, Preview, parse_call

WRITE = parse_call("write_file", {"path": "a.txt", "content": "hello"}, id="call_1")


async def until_pending(broker: ApprovalBroker, count: int = 1) -> list[dict[str, Any]]:
    for _ in range(200):
        if len(broker.pending()) >= count:
            return broker.pending()
        await asyncio.sleep(0.005)
    raise AssertionError("no pending approval")


async def test_allow() -> None:
    broker = ApprovalBroker()
    task = asyncio.create_task(broker.request("default", WRITE, Preview("diff", "+hello\n", {"path": "a.txt"})))
    [item] = await until_pending(broker)
    assert item["workspace"] == "default" and item["tool"] == "write_file" and item["call_id"] == "call_1"
    assert item["arguments"] == {"path": "a.txt", "content": "hello"}
    assert item["preview"] == {"kind": "diff", "text": "+hello\n", "path": "a.txt"}
    assert item["expires_at"] - item["created_at"] == pytest.approx(120)
    assert broker.resolve(item["id"], allow=True, by="user:cli")
    decision = await task
    assert decision == Decision(True, remember=False, reason=None, by="user:cli", approval_id=item["id"])
    assert broker.pending() == []
    assert not broker.resolve(item["id"], allow=False)  # already resolved


async def test_deny_with_reason_and_remember() -> None:
    broker = ApprovalBroker()
    denied = asyncio.create_task(broker.request("w", WRITE))
    [item] = await until_pending(broker)
    broker.resolve(item["id"], allow=False, remember=True, reason="wrong file", by="user:tray")
    decision = await denied
    assert (decision.allow, decision.remember, decision.reason, decision.by) == (
        False, False, "wrong file", "user:tray")

    allowed = asyncio.create_task(broker.request("w", WRITE))
    [item] = await until_pending(broker)
    broker.resolve(item["id"], allow=True, remember=True)
    assert (await allowed).remember is True


async def test_timeout_denies() -> None:
    broker = ApprovalBroker(timeout=0.05)
    decision = await broker.request("w", WRITE)
    assert (decision.allow, decision.reason, decision.by, decision.timed_out) == (False, "timed out", "timeout", True)
    assert broker.pending() == []
    quick = await ApprovalBroker().request("w", WRITE, timeout=0.01)
    assert quick.timed_out


async def test_cancelled_request_is_withdrawn() -> None:
    broker = ApprovalBroker()
    events = broker.subscribe()
    task = asyncio.create_task(broker.request("w", WRITE))
    await until_pending(broker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert broker.pending() == []
    kinds = [(await events.__anext__())["type"] for _ in range(2)]
    assert kinds == ["approval.pending", "approval.resolved"]
    events.close()


async def test_twenty_concurrent_approvals() -> None:
    broker = ApprovalBroker()
    calls = [parse_call("run_terminal", {"command": f"echo {index}"}, id=f"call_{index}") for index in range(20)]
    tasks = [asyncio.create_task(broker.request(f"ws{index % 3}", call, {"kind": "command", "text": call.command}))
             for index, call in enumerate(calls)]
    pending = await until_pending(broker, 20)
    assert len({item["id"] for item in pending}) == 20
    assert len(broker.pending("ws0")) == 7
    # Resolve in reverse order, allowing the even ones.
    by_call = {item["call_id"]: item["id"] for item in pending}
    for index in reversed(range(20)):
        assert broker.resolve(by_call[f"call_{index}"], allow=index % 2 == 0, by="user:test")
    decisions = await asyncio.gather(*tasks)
    assert [decision.allow for decision in decisions] == [index % 2 == 0 for index in range(20)]
    assert [decision.approval_id for decision in decisions] == [by_call[f"call_{index}"] for index in range(20)]
    assert broker.pending() == []


async def test_event_feed() -> None:
    broker = ApprovalBroker()
    task = asyncio.create_task(broker.request("w", WRITE))
    [item] = await until_pending(broker)
    received: list[dict[str, Any]] = []

    async def consume() -> None:
        async with broker.subscribe() as events:  # replays what is already pending
            async for event in events:
                received.append(event)
                if event["type"] == "tool.executed":
                    return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    broker.resolve(item["id"], allow=True)
    await task
    broker.publish({"type": "tool.executed", "tool": "write_file", "ok": True})
    await asyncio.wait_for(consumer, 1)
    assert [event["type"] for event in received] == ["approval.pending", "approval.resolved", "tool.executed"]
    assert received[0]["approval"]["id"] == item["id"]
    assert received[1] | {"time": 0} == {"type": "approval.resolved", "id": item["id"], "workspace": "w",
                                         "tool": "write_file", "allow": True, "remember": False, "reason": None,
                                         "by": "user", "time": 0}
    assert all(isinstance(event["time"], float) for event in received)
    assert not broker._subscribers  # the subscription was removed on exit


async def test_slow_subscriber_loses_oldest_events_and_close_ends_everything() -> None:
    broker = ApprovalBroker(queue_size=3)
    events = broker.subscribe()
    for index in range(5):
        broker.publish({"type": "tool.executed", "n": index})
    assert [(await events.__anext__())["n"] for _ in range(3)] == [2, 3, 4]
    task = asyncio.create_task(broker.request("w", WRITE))
    await until_pending(broker)
    broker.close()
    decision = await task
    assert (decision.allow, decision.by) == (False, "shutdown")
    remaining = [event async for event in events]
    # The resolution of the pending call arrives before the end of the stream.
    assert [event["type"] for event in remaining] == ["approval.pending", "approval.resolved"]
    assert remaining[1]["reason"] == "the companion is shutting down"


async def test_too_many_pending_are_refused() -> None:
    broker = ApprovalBroker(max_pending=2)
    tasks = [asyncio.create_task(broker.request("w", WRITE)) for _ in range(2)]
    await until_pending(broker, 2)
    third = await broker.request("w", WRITE)
    assert not third.allow and "too many" in (third.reason or "")
    broker.close()
    await asyncio.gather(*tasks)
