"""Held tool calls waiting for a person, mitmproxy-style: the call stays pending until someone resolves it.

`ApprovalBroker.request` parks a call (with a preview: the diff a write would make, or the command
and its directory) and waits until `resolve` is called for its id (from the control API, the CLI or
a tray), or the timeout passes (then it is denied, reason "timed out"). Any number may be pending
at once. `subscribe()` yields events for an SSE endpoint:

- `{"type": "approval.pending", "approval": {...}}`
- `{"type": "approval.resolved", "id", "workspace", "tool", "allow", "remember", "reason", "by"}`
- `{"type": "tool.executed", ...}`: published by `ToolRunner` after each call it runs (`publish`)
- `{"type": "tool.gated", ...}`: the same fields, for a gate-mode decision (the IDE runs the call)

Every event also carries `"time"` (Unix seconds). The broker belongs to one event loop: call
`resolve` from it (aiohttp handlers do), or through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from .audit import summarise_arguments
from .definitions import ToolCall
from .results import Preview

APPROVAL_PENDING = "approval.pending"
APPROVAL_RESOLVED = "approval.resolved"
TOOL_EXECUTED = "tool.executed"
# A gate-mode decision: the call goes back to the IDE (allowed) or is refused; nothing ran here.
TOOL_GATED = "tool.gated"

# Strings longer than this are cut in the arguments shown with a pending approval (the preview
# carries the diff).
DISPLAY_LIMIT = 4000


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    remember: bool = False
    reason: str | None = None
    by: str = "user"  # who decided: "user:<name>", "timeout", "cancelled", "shutdown", "broker"
    approval_id: str | None = None

    @property
    def timed_out(self) -> bool:
        return self.by == "timeout"


@dataclass(slots=True)
class PendingApproval:
    id: str
    workspace: str
    tool: str
    arguments: dict[str, Any]
    preview: dict[str, Any]
    call_id: str | None
    created_at: float
    expires_at: float
    future: asyncio.Future[Decision] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workspace": self.workspace,
            "tool": self.tool,
            "arguments": self.arguments,
            "preview": self.preview,
            "call_id": self.call_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


class Subscription:
    """An async iterator of broker events; registered as soon as it is created, so nothing is missed.

    Use `async with broker.subscribe() as events: async for event in events: ...`, or call `close()`.
    A subscriber that falls `queue_size` events behind loses the oldest ones.
    """

    def __init__(self, broker: ApprovalBroker, queue_size: int) -> None:
        self._broker = broker
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self.closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self.closed and self.queue.empty():
            raise StopAsyncIteration
        event = await self.queue.get()
        if event.get("type") == "_closed":
            raise StopAsyncIteration
        return event

    def offer(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._broker._subscribers.discard(self)
            self.offer({"type": "_closed"})

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


class ApprovalBroker:
    def __init__(self, *, timeout: float = 120.0, max_pending: int = 256, queue_size: int = 1000) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.queue_size = queue_size
        self._pending: dict[str, PendingApproval] = {}
        self._subscribers: set[Subscription] = set()

    # ---- events -----------------------------------------------------------------------------------

    def publish(self, event: Mapping[str, Any]) -> None:
        """Send an event to every subscriber (`time` added when missing)."""
        payload = {"time": time.time(), **event}
        for subscriber in list(self._subscribers):
            subscriber.offer(payload)

    def subscribe(self, *, replay: bool = True) -> Subscription:
        """A new event stream; with `replay`, it starts with an approval.pending per pending approval."""
        subscription = Subscription(self, self.queue_size)
        if replay:
            for item in self._pending.values():
                subscription.offer({"type": APPROVAL_PENDING, "time": item.created_at, "approval": item.to_dict()})
        self._subscribers.add(subscription)
        return subscription

    # ---- approvals --------------------------------------------------------------------------------

    def pending(self, workspace: str | None = None) -> list[dict[str, Any]]:
        """The approvals waiting, oldest first."""
        return [item.to_dict() for item in self._pending.values() if workspace is None or item.workspace == workspace]

    def get(self, approval_id: str) -> dict[str, Any] | None:
        item = self._pending.get(approval_id)
        return item.to_dict() if item else None

    async def request(self, workspace: str, call: ToolCall, preview: Preview | Mapping[str, Any] | None = None,
                      *, timeout: float | None = None) -> Decision:  # noqa: ASYNC109
        """Hold `call` until a person resolves it or `timeout` (default: the broker's) passes."""
        if len(self._pending) >= self.max_pending:
            return Decision(False, reason=f"too many approvals pending ({self.max_pending})", by="broker")
        wait = self.timeout if timeout is None else timeout
        now = time.time()
        item = PendingApproval(
            id="apr_" + secrets.token_urlsafe(9),
            workspace=workspace,
            tool=call.name,
            arguments=summarise_arguments(call.arguments, DISPLAY_LIMIT, secret_free=False),
            preview=preview.to_dict() if isinstance(preview, Preview) else dict(preview or {}),
            call_id=call.id,
            created_at=now,
            expires_at=now + wait,
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending[item.id] = item
        self.publish({"type": APPROVAL_PENDING, "approval": item.to_dict()})
        try:
            async with asyncio.timeout(wait):  # not wait_for: on 3.11 it can swallow a racing cancel
                return await asyncio.shield(item.future)
        except TimeoutError:
            return self._finish(item, Decision(False, reason="timed out", by="timeout"))
        except asyncio.CancelledError:
            self._finish(item, Decision(False, reason="cancelled (the request went away)", by="cancelled"))
            raise

    def resolve(self, approval_id: str, allow: bool, remember: bool = False, reason: str | None = None,
                by: str = "user") -> bool:
        """Decide a pending approval; False when there is no such pending approval (any more)."""
        item = self._pending.get(approval_id)
        if item is None or item.future.done():
            return False
        self._finish(item, Decision(bool(allow), remember=bool(remember) and bool(allow), reason=reason, by=by))
        return True

    def _finish(self, item: PendingApproval, decision: Decision) -> Decision:
        if item.future.done():
            # Resolved in the same loop iteration as the timeout fired: the person's decision stands.
            return item.future.result()
        self._pending.pop(item.id, None)
        decision = replace(decision, approval_id=item.id)
        item.future.set_result(decision)
        self.publish({
            "type": APPROVAL_RESOLVED,
            "id": item.id,
            "workspace": item.workspace,
            "tool": item.tool,
            "allow": decision.allow,
            "remember": decision.remember,
            "reason": decision.reason,
            "by": decision.by,
        })
        return decision

    def close(self, reason: str = "the companion is shutting down") -> None:
        """Deny everything pending and end every subscription."""
        for item in list(self._pending.values()):
            self._finish(item, Decision(False, reason=reason, by="shutdown"))
        for subscriber in list(self._subscribers):
            subscriber.close()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """`async for event in broker.events()`: a subscription closed when the loop is left."""
        subscription = self.subscribe()
        try:
            async for event in subscription:
                yield event
        finally:
            subscription.close()
