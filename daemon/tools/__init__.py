"""Local tool calls: the Agent API's read_file, write_file, list_directory, run_terminal and
search_replace, executed on this machine inside one workspace root.

`ToolRunner.run(workspace, call)` is the one entry point: it normalises the model's arguments,
asks the workspace's `Policy` (deny / ask / allow), holds the call for a person through the
`ApprovalBroker` when asked, executes it in a `Sandbox`, keeps what a write replaced in the undo
`Journal`, and writes an `AuditLog` line. It never raises (except on cancellation): a refusal, a
timeout or an error comes back as a `ToolResult` the model can read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ..config.paths import Paths
from ..config.tool_limits import ToolLimits
from .approvals import APPROVAL_PENDING, APPROVAL_RESOLVED, TOOL_EXECUTED, ApprovalBroker, Decision, Subscription
from .audit import AuditLog, audit_file, scrub, summarise_arguments
from .definitions import (
    TOOL_DEFINITIONS,
    TOOL_NAMES,
    ToolArgumentError,
    ToolCall,
    coerce_call,
    normalise_arguments,
    parse_call,
    parse_openai_tool_call,
    tool_definitions,
)
from .executor import Executor, execute
from .journal import Journal, UndoEntry, UndoError, undo_dir
from .policy import Policy, PolicyDecision, Rule, ToolPolicySettings
from .results import Preview, ToolResult
from .sandbox import PathChangedError, ResolvedPath, Sandbox, SandboxError
from .terminal import scrub_environment

__all__ = [
    "APPROVAL_PENDING",
    "APPROVAL_RESOLVED",
    "TOOL_DEFINITIONS",
    "TOOL_EXECUTED",
    "TOOL_NAMES",
    "ApprovalBroker",
    "AuditLog",
    "Decision",
    "Executor",
    "Journal",
    "PathChangedError",
    "Policy",
    "PolicyDecision",
    "Preview",
    "ResolvedPath",
    "Rule",
    "Sandbox",
    "SandboxError",
    "Subscription",
    "ToolArgumentError",
    "ToolCall",
    "ToolLimits",
    "ToolPolicySettings",
    "ToolResult",
    "ToolRunner",
    "UndoEntry",
    "UndoError",
    "audit_file",
    "coerce_call",
    "execute",
    "normalise_arguments",
    "parse_call",
    "parse_openai_tool_call",
    "scrub_environment",
    "tool_definitions",
    "undo_dir",
]

log = logging.getLogger("llmtune_companion.tools")

# Called with (workspace, rule) when a person approves with "remember": persist the rule.
RememberHook = Callable[[str, str], None]


class ToolRunner:
    """Policy, approval, execution, undo journal and audit for the tool calls of one workspace root."""

    def __init__(
        self,
        root: str | os.PathLike[str] | Sandbox,
        *,
        policy: Policy | None = None,
        broker: ApprovalBroker | None = None,
        journal: Journal | None = None,
        audit: AuditLog | None = None,
        limits: ToolLimits | None = None,
        companion_dir: str | os.PathLike[str] | None = None,
        on_remember: RememberHook | None = None,
        approval_timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.sandbox = root if isinstance(root, Sandbox) else Sandbox(root, companion_dir=companion_dir)
        self.policy = policy or Policy()
        self.broker = broker
        self.journal = journal
        self.audit = audit
        self.executor = Executor(self.sandbox, limits, journal=journal, environ=environ)
        self.on_remember = on_remember
        self.approval_timeout = approval_timeout

    @classmethod
    def for_paths(
        cls,
        paths: Paths,
        root: str | os.PathLike[str],
        *,
        policy: ToolPolicySettings | Policy | None = None,
        broker: ApprovalBroker | None = None,
        limits: ToolLimits | None = None,
        on_remember: RememberHook | None = None,
    ) -> ToolRunner:
        """A runner keeping its journal and audit log in the settings directory, which it protects."""
        return cls(
            Sandbox(root, companion_dir=paths.root),
            policy=policy if isinstance(policy, Policy) else Policy(policy),
            broker=broker,
            journal=Journal.for_paths(paths),
            audit=AuditLog.for_paths(paths),
            limits=limits,
            on_remember=on_remember,
        )

    @property
    def root(self) -> str:
        return str(self.sandbox.root)

    def definitions(self) -> list[dict[str, Any]]:
        """The OpenAI `tools` entries to offer the model."""
        return tool_definitions()

    async def run(self, workspace: str, call: ToolCall | Mapping[str, Any]) -> ToolResult:
        started = time.monotonic()
        name, arguments, call_id = self._describe(call)
        try:
            try:
                call = coerce_call(call)
            except ToolArgumentError as exc:
                result = ToolResult(str(exc), ok=False, meta={"error": "arguments"})
                return self._done(workspace, name, arguments, call_id, result, started,
                                  decision="deny", by="arguments")
            return await self._run(workspace, call, started)
        except asyncio.CancelledError:
            self._done(workspace, name, arguments, call_id, ToolResult("cancelled", ok=False), started,
                       decision="cancelled", by="cancelled")
            raise
        except Exception as exc:  # never let a tool call take the proxy down
            log.exception("tool %s failed in workspace %s", name, workspace)
            result = ToolResult(f"The tool failed with an internal error ({type(exc).__name__}); it may not have run.",
                                ok=False, meta={"error": "internal"})
            return self._done(workspace, name, arguments, call_id, result, started, decision="error", by="internal")

    @staticmethod
    def _describe(call: ToolCall | Mapping[str, Any]) -> tuple[str, dict[str, Any], str | None]:
        if isinstance(call, ToolCall):
            return call.name, dict(call.arguments), call.id
        function = call.get("function") if isinstance(call.get("function"), Mapping) else call
        name = function.get("name") if isinstance(function, Mapping) else None
        raw = function.get("arguments") if isinstance(function, Mapping) else None
        call_id = call.get("id")
        return (str(name) if name else "?", dict(raw) if isinstance(raw, Mapping) else {"raw": str(raw or "")},
                call_id if isinstance(call_id, str) else None)

    async def _run(self, workspace: str, call: ToolCall, started: float) -> ToolResult:
        verdict = self.policy.evaluate(call, self.sandbox)
        policy_meta = verdict.to_dict()
        if verdict.action == "deny":
            content = verdict.reason if verdict.source == "sandbox" else (
                f"Refused by the workspace's tool policy: {verdict.reason}. Do not retry this call.")
            result = ToolResult(content, ok=False, meta={"error": "denied", "policy": policy_meta})
            return self._done(workspace, call.name, call.arguments, call.id, result, started, decision="deny",
                              by=verdict.source, rule=verdict.rule, reason=verdict.reason)
        decided_by: str = "policy" if verdict.source == "rule" else verdict.source
        approval_id: str | None = None
        expect: str | Literal[False] | None = False
        remembered: str | None = None
        if verdict.action == "ask":
            if self.broker is None:
                result = ToolResult(f"This call needs a person's approval ({verdict.reason}) and no one can be "
                                    "asked here; it was not run.", ok=False,
                                    meta={"error": "denied", "policy": policy_meta})
                return self._done(workspace, call.name, call.arguments, call.id, result, started, decision="deny",
                                  by="no-approver", rule=verdict.rule, reason=verdict.reason)
            preview = await self.executor.preview(call)
            if preview.error is not None:
                # It would fail anyway: tell the model without bothering anyone.
                return self._done(workspace, call.name, call.arguments, call.id, preview.error, started,
                                  decision="skipped", by="preview", rule=verdict.rule)
            preview.meta["reason"] = verdict.reason
            decision = await self.broker.request(workspace, call, preview, timeout=self.approval_timeout)
            approval_id = decision.approval_id
            decided_by = decision.by
            if not decision.allow:
                if decision.timed_out:
                    content = "No one approved this call in time; it was not run."
                else:
                    content = "The user denied this call; it was not run." + (
                        f" Reason: {decision.reason}" if decision.reason else "")
                result = ToolResult(content, ok=False, meta={"error": "timeout" if decision.timed_out else "denied",
                                                             "policy": policy_meta})
                return self._done(workspace, call.name, call.arguments, call.id, result, started, decision="deny",
                                  by=decided_by, rule=verdict.rule, reason=decision.reason)
            if decision.remember:
                remembered = self.policy.remember(call, self.sandbox)
                if remembered and self.on_remember is not None:
                    try:
                        self.on_remember(workspace, remembered)
                    except Exception:
                        log.exception("could not save the remembered rule %s", remembered)
            if "before_sha256" in preview.meta:
                expect = preview.meta["before_sha256"]
        result = await self.executor.execute(call, workspace=workspace, expect_sha256=expect,
                                             expect_path=verdict.target.display if verdict.target else None)
        result.meta.setdefault("policy", policy_meta)
        if remembered:
            result.meta["remembered_rule"] = remembered
        return self._done(workspace, call.name, call.arguments, call.id, result, started, decision="allow",
                          by=decided_by, rule=verdict.rule, approval_id=approval_id)

    def _done(self, workspace: str, tool: str, arguments: Mapping[str, Any], call_id: str | None, result: ToolResult,
              started: float, *, decision: str, by: str, rule: str | None = None, reason: str | None = None,
              approval_id: str | None = None) -> ToolResult:
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        result_bytes = len(result.content.encode("utf-8", "replace"))
        result.meta["decision"] = decision
        result.meta["decided_by"] = by
        if self.audit is not None:
            try:
                self.audit.record(
                    workspace=workspace, tool=tool, arguments=arguments, decision=decision, decided_by=by,
                    ok=result.ok, result_bytes=result_bytes, duration_ms=duration_ms, call_id=call_id, rule=rule,
                    reason=reason, approval_id=approval_id,
                    extra={key: result.meta[key] for key in ("exit_code", "timed_out", "undo_id", "error")
                           if key in result.meta},
                )
            except Exception:
                log.exception("could not write the tool audit log")
        if self.broker is not None:
            self.broker.publish({
                "type": TOOL_EXECUTED,
                "workspace": workspace,
                "tool": tool,
                "call_id": call_id,
                "arguments": summarise_arguments(arguments),
                "ok": result.ok,
                "approval_id": approval_id,
                "decision": decision,
                "decided_by": by,
                "summary": scrub(result.content.splitlines()[0] if result.content else "")[:200],
                "result_bytes": result_bytes,
                "duration_ms": duration_ms,
                "undo_id": result.meta.get("undo_id"),
                "remembered_rule": result.meta.get("remembered_rule"),
            })
        return result
