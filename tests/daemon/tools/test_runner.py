"""The facade end to end: policy, approval, execution, undo journal, audit and events together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.tools import (
    TOOL_NAMES,
    ApprovalBroker,
    Policy,
    ToolLimits,
    ToolPolicySettings,
    ToolResult,
    ToolRunner,
    audit_file,
)


@pytest.fixture
def home(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "home")


@pytest.fixture
def broker() -> ApprovalBroker:
    return ApprovalBroker(timeout=5)


@pytest.fixture
def remembered() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def runner(root: Path, home: Paths, broker: ApprovalBroker, remembered: list[tuple[str, str]]) -> ToolRunner:
    settings = ToolPolicySettings(deny=("run_terminal(rm *)",), allow=("run_terminal(echo *)",))
    return ToolRunner.for_paths(home, root, policy=settings, broker=broker,
                                limits=ToolLimits(command_timeout=5, kill_grace=0.3),
                                on_remember=lambda workspace, rule: remembered.append((workspace, rule)))


class Person:
    """Answers approvals from the event feed, as a tray or the CLI would."""

    def __init__(self, broker: ApprovalBroker, *, allow: bool = True, remember: bool = False,
                 reason: str | None = None, before: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.broker = broker
        self.allow, self.remember, self.reason, self.before = allow, remember, reason, before
        self.seen: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def run(self) -> None:
        async with self.broker.subscribe() as events:
            async for event in events:
                self.events.append(event)
                if event["type"] == "approval.pending":
                    self.seen.append(event["approval"])
                    if self.before:
                        self.before(event["approval"])
                    self.broker.resolve(event["approval"]["id"], self.allow, self.remember, self.reason, "user:test")


@pytest.fixture
async def person(broker: ApprovalBroker) -> AsyncIterator[Person]:
    answering = Person(broker)
    task = asyncio.create_task(answering.run())
    await asyncio.sleep(0)
    yield answering
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def audit_lines(home: Paths) -> list[dict[str, Any]]:
    path = audit_file(home)
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def openai_call(name: str, call_id: str = "call_1", **arguments: Any) -> dict[str, Any]:
    encoded = orjson.dumps(arguments).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}}


async def test_allowed_read_runs_without_asking(runner: ToolRunner, person: Person, home: Paths) -> None:
    result = await runner.run("default", openai_call("read_file", file_path="README.md"))
    assert result.ok and result.content == "# demo\n"
    assert person.seen == []
    [line] = audit_lines(home)
    assert (line["tool"], line["decision"], line["decided_by"], line["call_id"]) == (
        "read_file", "allow", "default", "call_1")
    assert result.to_message("call_1") == {"role": "tool", "content": "# demo\n", "tool_call_id": "call_1"}


async def test_write_is_asked_previewed_executed_journalled_and_audited(runner: ToolRunner, person: Person,
                                                                        root: Path, home: Paths) -> None:
    result = await runner.run("default", openai_call("search_replace", path="src/main.py", old_string="return 1",
                                                     new_string="return 42"))
    assert result.ok, result.content
    assert "+    return 42" in result.content
    [approval] = person.seen
    assert approval["tool"] == "search_replace" and approval["workspace"] == "default"
    assert approval["preview"]["kind"] == "diff" and "+    return 42" in approval["preview"]["text"]
    assert (root / "src" / "main.py").read_text() == "def main():\n    return 42\n"
    assert runner.journal is not None
    [entry] = runner.journal.list()
    assert entry.id == result.meta["undo_id"]
    [line] = audit_lines(home)
    assert (line["decision"], line["decided_by"], line["approval_id"], line["undo_id"]) == (
        "allow", "user:test", approval["id"], entry.id)
    await asyncio.sleep(0.01)
    assert [event["type"] for event in person.events] == ["approval.pending", "approval.resolved", "tool.executed"]
    assert person.events[-1]["undo_id"] == entry.id
    await runner.journal.undo()
    assert (root / "src" / "main.py").read_text() == "def main():\n    return 1\n"


async def test_denied_by_a_rule(runner: ToolRunner, person: Person, root: Path, home: Paths) -> None:
    result = await runner.run("default", {"name": "run_terminal", "arguments": {"cmd": "rm -rf src"}})
    assert not result.ok and "Refused by the workspace's tool policy" in result.content
    assert "run_terminal(rm *)" in result.content
    assert (root / "src").exists() and person.seen == []
    [line] = audit_lines(home)
    assert (line["decision"], line["decided_by"], line["rule"]) == ("deny", "rule", "run_terminal(rm *)")


async def test_allowed_command_by_a_rule(runner: ToolRunner, person: Person) -> None:
    result = await runner.run("default", {"name": "run_terminal", "arguments": {"command": "echo hi"}})
    assert result.ok and result.content.startswith("hi\n") and result.meta["exit_code"] == 0
    assert person.seen == []


async def test_outside_the_root_is_refused_with_the_sandbox_reason(runner: ToolRunner, person: Person) -> None:
    result = await runner.run("default", {"name": "read_file", "arguments": {"path": "/etc/passwd"}})
    assert not result.ok and "outside the workspace" in result.content
    assert result.meta["decided_by"] == "sandbox"


async def test_denied_by_the_person(runner: ToolRunner, broker: ApprovalBroker, root: Path, home: Paths) -> None:
    answering = Person(broker, allow=False, reason="not that file")
    task = asyncio.create_task(answering.run())
    result = await runner.run("default", {"name": "write_file", "arguments": {"path": "x.txt", "content": "x"}})
    task.cancel()
    assert not result.ok and result.content.endswith("Reason: not that file")
    assert not (root / "x.txt").exists()
    assert audit_lines(home)[0]["decision"] == "deny"


async def test_approval_timeout(root: Path, home: Paths) -> None:
    runner = ToolRunner.for_paths(home, root, broker=ApprovalBroker(timeout=0.05))
    result = await runner.run("default", {"name": "write_file", "arguments": {"path": "x.txt", "content": "x"}})
    assert not result.ok and "No one approved this call in time" in result.content
    assert result.meta["error"] == "timeout"
    assert not (root / "x.txt").exists()
    assert audit_lines(home)[0]["decided_by"] == "timeout"


async def test_remembered_approval_is_not_asked_again(runner: ToolRunner, broker: ApprovalBroker,
                                                      remembered: list[tuple[str, str]]) -> None:
    answering = Person(broker, remember=True)
    task = asyncio.create_task(answering.run())
    call = {"name": "run_terminal", "arguments": {"command": "ls src && pwd"}}
    first = await runner.run("default", call)
    second = await runner.run("default", call)
    other = asyncio.create_task(runner.run("default", {"name": "run_terminal", "arguments": {"command": "ls"}}))
    await other
    task.cancel()
    assert first.ok and second.ok
    assert len(answering.seen) == 2  # the first call and `ls`, not the repeat
    assert first.meta["remembered_rule"] == "run_terminal(ls src && pwd)"
    assert remembered == [("default", "run_terminal(ls src && pwd)"), ("default", "run_terminal(ls)")]
    assert second.meta["policy"]["rule"] == "run_terminal(ls src && pwd)"


async def test_a_call_that_would_fail_is_not_asked(runner: ToolRunner, person: Person, home: Paths) -> None:
    result = await runner.run("default", {"name": "search_replace",
                                          "arguments": {"path": "README.md", "search": "nope", "replace": "x"}})
    assert not result.ok and "not found" in result.content
    assert person.seen == []
    assert audit_lines(home)[0]["decision"] == "skipped"


async def test_file_changed_while_waiting_for_approval(runner: ToolRunner, broker: ApprovalBroker,
                                                       root: Path) -> None:
    answering = Person(broker, before=lambda _: (root / "README.md").write_text("edited meanwhile\n"))
    task = asyncio.create_task(answering.run())
    result = await runner.run("default", {"name": "write_file", "arguments": {"path": "README.md", "content": "new"}})
    task.cancel()
    assert not result.ok and "changed while the call was waiting for approval" in result.content
    assert (root / "README.md").read_text() == "edited meanwhile\n"


async def test_argument_errors_and_internal_errors_become_results(runner: ToolRunner, home: Paths,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bad = await runner.run("default", openai_call("read_file", path="a", offset=10))
    assert not bad.ok and "unknown argument 'offset'" in bad.content
    unknown = await runner.run("default", openai_call("delete_everything"))
    assert not unknown.ok and "unknown tool" in unknown.content

    async def explode(*args: Any, **kwargs: Any) -> ToolResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(runner.executor, "execute", explode)
    crashed = await runner.run("default", openai_call("read_file", path="README.md"))
    assert not crashed.ok and "internal error (RuntimeError)" in crashed.content
    assert [line["decision"] for line in audit_lines(home)] == ["deny", "deny", "error"]


async def test_without_a_broker_asking_means_refusing(root: Path) -> None:
    runner = ToolRunner(root, policy=Policy())
    result = await runner.run("default", {"name": "write_file", "arguments": {"path": "x", "content": "x"}})
    assert not result.ok and "needs a person's approval" in result.content
    assert not (root / "x").exists()
    assert (await runner.run("default", {"name": "read_file", "arguments": {"path": "README.md"}})).ok
    assert [d["function"]["name"] for d in runner.definitions()] == list(TOOL_NAMES)


async def test_companion_settings_are_never_touched(tmp_path: Path, root: Path, person: Person) -> None:
    home = Paths(root / ".companion")
    home.ensure()
    (home.root / "secrets.json").write_text('{"workspaces": {}}')
    runner = ToolRunner.for_paths(home, root, policy=ToolPolicySettings(allow=("read_file", "write_file")),
                                  broker=person.broker)
    result = await runner.run("default", {"name": "read_file", "arguments": {"path": ".companion/secrets.json"}})
    assert not result.ok and "settings directory" in result.content
    listing = await runner.run("default", {"name": "list_directory", "arguments": {"depth": 3}})
    assert ".companion" not in listing.content
    assert person.seen == []


async def test_a_path_redirected_while_waiting_for_approval_is_refused(runner: ToolRunner, broker: ApprovalBroker,
                                                                      root: Path) -> None:
    (root / "notes.txt").write_text("notes\n")

    def redirect(_: dict[str, Any]) -> None:
        (root / "notes.txt").unlink()
        (root / "notes.txt").symlink_to(".git/config")

    answering = Person(broker, before=redirect)
    task = asyncio.create_task(answering.run())
    result = await runner.run("default", {"name": "write_file", "arguments": {"path": "notes.txt", "content": "x"}})
    task.cancel()
    assert not result.ok and "now leads to '.git/config'" in result.content
    assert (root / ".git" / "config").read_text() == "[core]\n"
