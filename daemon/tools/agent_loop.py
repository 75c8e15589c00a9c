"""Tool calls in gate and execute modes: the only place the companion reads a chat answer.

In passthrough mode (the default) answers are relayed as bytes and nothing here runs. In gate mode
the answer is read so that each tool call reaches the client only once the policy or a person
allowed it; a refused call is taken out and replaced by assistant text saying what was refused and
why. In execute mode the daemon runs the allowed calls itself, appends their results and asks the
model again, until it answers without tool calls or reaches the step limit.

Streaming clients still get a stream: content deltas as they arrive, the tool activity as it
happens, the final answer, then `[DONE]`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from aiohttp import web

from ..adapters import BackendRequest, UpstreamBroken
from ..adapters.openai_stream import (
    DONE,
    SSE_HEADERS,
    ChunkWriter,
    FunctionCall,
    Turn,
    completion,
    sse_events,
    wire_calls,
)
from ..config.settings import Workspace
from ..errors import CompanionError, sse_error_event
from ..runtime import Runtime
from ..upstream.forwarding import forward
from ..upstream.routing import Route
from . import ToolRunner

log = logging.getLogger(__name__)

ToolMode = Literal["passthrough", "gate", "execute"]
MODE_HEADER = "X-Companion-Tools"
# Strictness order: a request may ask for a stricter mode than its workspace's, never a looser one.
MODE_STRICTNESS: dict[str, int] = {"passthrough": 0, "gate": 1, "execute": 1}


@dataclass(frozen=True, slots=True)
class ToolVerdict:
    allowed: bool
    reason: str = ""
    by: str = "policy"


class ToolHost(Protocol):
    """What the agent loop needs from the tools package (policy, approvals, execution)."""

    async def authorize(self, workspace: Workspace, call: FunctionCall) -> ToolVerdict: ...

    async def execute(self, workspace: Workspace, call: FunctionCall) -> str: ...

    def definitions(self) -> list[dict[str, Any]]: ...


def choose_mode(configured: ToolMode, header: str | None) -> ToolMode:
    if not header:
        return configured
    wanted = header.strip().lower()
    if wanted not in MODE_STRICTNESS:
        raise CompanionError(400, f"{MODE_HEADER} must be passthrough, gate or execute", "invalid_tool_mode")
    if MODE_STRICTNESS[wanted] < MODE_STRICTNESS[configured]:
        raise CompanionError(403, f"this workspace's tool mode is {configured}; a request cannot loosen it "
                                  f"to {wanted}", "tool_mode_not_allowed")
    return wanted  # type: ignore[return-value]


class ClientStream:
    """The client's SSE stream, opened on first write, in OpenAI's chunk shape."""

    def __init__(self, request: web.Request, headers: dict[str, str], model: str) -> None:
        self.request = request
        self.headers = headers
        self.chunks = ChunkWriter(model)
        self.response: web.StreamResponse | None = None

    async def open(self) -> web.StreamResponse:
        if self.response is None:
            headers = {**self.headers, **SSE_HEADERS, "X-Accel-Buffering": "no"}
            self.response = web.StreamResponse(status=200, headers=headers)
            await self.response.prepare(self.request)
            await self.chunk({"role": "assistant", "content": ""})
        return self.response

    async def raw(self, data: bytes) -> None:
        response = await self.open()
        await response.write(data)

    async def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        response = self.response or await self.open()
        await response.write(self.chunks.delta(delta, finish_reason))

    async def usage(self, usage: dict[str, Any]) -> None:
        response = self.response or await self.open()
        await response.write(self.chunks.usage(usage))

    async def close(self) -> web.StreamResponse:
        response = await self.open()
        await response.write(DONE)
        await response.write_eof()
        return response


def _add_usage(total: dict[str, int], usage: dict[str, Any] | None) -> None:
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = (usage or {}).get(key)
        if isinstance(value, int):
            total[key] = total.get(key, 0) + value


class AgentLoop:
    def __init__(self, runtime: Runtime, host: ToolHost, workspace: Workspace, route: Route,
                 request: web.Request, endpoint: Literal["chat", "agent_chat"], mode: ToolMode,
                 max_steps: int, client_model: str) -> None:
        self.client_model = client_model
        self.runtime = runtime
        self.host = host
        self.workspace = workspace
        self.route = route
        self.request = request
        self.endpoint = endpoint
        self.mode = mode
        self.max_steps = max_steps
        self.usage: dict[str, int] = {}
        self.backend = route.backend

    async def run(self, payload: dict[str, Any], forward_headers: dict[str, str]) -> web.StreamResponse:
        payload = dict(payload)
        payload["model"] = self.route.model
        if self.mode == "execute" and not payload.get("tools"):
            payload["tools"] = self.host.definitions()
        stream = payload.get("stream") is True
        messages = list(payload["messages"])
        client = ClientStream(self.request, {}, self.client_model) if stream else None
        notes: list[str] = []
        for step in range(self.max_steps + 1):
            turn = Turn()
            payload["messages"] = messages
            failure = await self.ask(payload, forward_headers, turn, client)
            if failure is not None:
                return failure
            calls = turn.tool_calls()
            if not calls:
                return await self.finish(turn, client, notes, calls=[])
            if self.mode == "gate":
                allowed = await self.gate(calls, notes)
                return await self.finish(turn, client, notes, calls=allowed)
            if step == self.max_steps:
                notes.append(f"[companion] stopped after {self.max_steps} tool steps; the model still asked "
                             f"for {', '.join(c.name for c in calls)}.")
                return await self.finish(turn, client, notes, calls=[])
            messages.append({"role": "assistant", "content": turn.text or None, "tool_calls": wire_calls(calls)})
            for call in calls:
                result = await self.execute(call, client)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        raise AssertionError("unreachable")

    async def ask(self, payload: dict[str, Any], headers: dict[str, str], turn: Turn,
                  client: ClientStream | None) -> web.StreamResponse | None:
        """One model call; content is streamed to the client as it arrives, tool calls are held."""
        body = orjson.dumps(payload)
        upstream_request = BackendRequest(self.endpoint, body, client is not None, self.workspace.api_key,
                                          headers, payload)
        forwarded = await forward(self.runtime, self.route, upstream_request, self.workspace)
        self.backend = forwarded.backend
        if client is not None:
            client.headers["X-Companion-Backend"] = forwarded.backend
        response = forwarded.response
        try:
            if response.status >= 400:
                body = await response.read(1024 * 1024)
                if client is not None and client.response is not None:
                    await client.raw(sse_error_event(f"the model answered HTTP {response.status}",
                                                     "upstream_error", response.status))
                    return await client.close()
                headers_out = {"Content-Type": response.headers.get("Content-Type", "application/json"),
                               "X-Companion-Backend": forwarded.backend, **forwarded.client_headers()}
                if "Retry-After" in response.headers:
                    headers_out["Retry-After"] = response.headers["Retry-After"]
                return web.Response(status=response.status, body=body, headers=headers_out)
            if client is None:
                parsed = orjson.loads(await response.read())
                turn.feed_message(parsed)
                _add_usage(self.usage, turn.usage)
                return None
            try:
                async for chunk in sse_events(response.chunks()):
                    if chunk is None:
                        break
                    text = turn.feed_chunk(chunk)
                    if text:
                        await client.chunk({"content": text})
            except UpstreamBroken as exc:
                await client.raw(sse_error_event(f"{exc}; the answer is incomplete", exc.code))
                return await client.close()
            _add_usage(self.usage, turn.usage)
            return None
        except (orjson.JSONDecodeError, UpstreamBroken) as exc:
            raise CompanionError(502, f"the model's answer could not be read: {exc}", "upstream_broken") from None
        finally:
            await response.aclose()

    async def gate(self, calls: list[FunctionCall], notes: list[str]) -> list[FunctionCall]:
        allowed = []
        for call in calls:
            verdict = await self.host.authorize(self.workspace, call)
            if verdict.allowed:
                allowed.append(call)
            else:
                notes.append(f"[companion] refused {call.name}({_short(call.arguments)}): {verdict.reason} "
                             f"(decided by {verdict.by}).")
        return allowed

    async def execute(self, call: FunctionCall, client: ClientStream | None) -> str:
        if client is not None:
            await client.chunk({"content": f"\n\n[companion] {call.name}({_short(call.arguments)})\n"})
        result = await self.host.execute(self.workspace, call)
        if client is not None:
            first_line = result.splitlines()[0] if result else ""
            await client.chunk({"content": f"[companion] -> {_short(first_line, 160)}\n\n"})
        return result

    async def finish(self, turn: Turn, client: ClientStream | None, notes: list[str],
                     calls: list[FunctionCall]) -> web.StreamResponse:
        note = ("\n\n" + "\n".join(notes)) if notes else ""
        finish_reason = "tool_calls" if calls else (turn.finish_reason if turn.finish_reason != "tool_calls"
                                                     else "stop")
        headers = {"X-Companion-Backend": self.backend}
        if client is not None:
            if note:
                await client.chunk({"content": note})
            if calls:
                await client.chunk({"tool_calls": [call.to_wire(i) for i, call in enumerate(calls)]})
            await client.chunk({}, finish_reason)
            if self.usage:
                await client.usage(self.usage)
            return await client.close()
        message: dict[str, Any] = {"role": "assistant", "content": (turn.text + note) or None}
        if calls:
            message["tool_calls"] = wire_calls(calls)
        body = completion(turn.model or self.route.model, message, finish_reason, ident=turn.ident,
                          usage=self.usage)
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunnerHost:
    """The agent loop's view of a workspace's ToolRunner (policy, approvals, sandboxed execution)."""

    def __init__(self, runner: ToolRunner) -> None:
        self.runner = runner

    def definitions(self) -> list[dict[str, Any]]:
        return self.runner.definitions()

    async def execute(self, workspace: Workspace, call: FunctionCall) -> str:
        result = await self.runner.run(workspace.name, call.to_wire())
        return result.content

    async def authorize(self, workspace: Workspace, call: FunctionCall) -> ToolVerdict:
        """Gate mode: the IDE runs the call, so only the decision is made here, never the call."""
        auth = await self.runner.gate(workspace.name, call.to_wire())
        return ToolVerdict(auth.allowed, auth.reason or "", auth.by)
