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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..config.paths import Paths
from ..config.tool_limits import ToolLimits
from .approvals import (
    APPROVAL_PENDING,
    APPROVAL_RESOLVED,
    TOOL_EXECUTED,
    TOOL_GATED,
    ApprovalBroker,
    Decision,
    Subscription,
)
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
    "TOOL_GATED",
    "TOOL_NAMES",
    "ApprovalBroker",
    "AuditLog",
    "Authorization",
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


@dataclass(frozen=True, slots=True)
class Authorization:
    """What `ToolRunner.authorize` decided about one call, and what executing it then needs."""

    allowed: bool
    decision: str  # allow / deny / skipped
    by: str  # policy, default, sandbox, user:NAME, timeout, no-approver, arguments, preview ...
    reason: str | None = None
    rule: str | None = None
    approval_id: str | None = None
    remembered: str | None = None
    # A refusal as the model reads it (execute mode).
    refusal: ToolResult | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    expect_sha256: str | Literal[False] | None = False


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

    async def authorize(self, workspace: str, call: ToolCall, *, execute: bool = True) -> Authorization:
        """The one approval step of gate and execute modes: the policy, then a person if it asks.

        Approval events are published by the broker; the audit line is written by the caller
        (`run` after executing, `gate` at once), so each call gets exactly one.
        """
        verdict = self.policy.evaluate(call, self.sandbox)
        policy_meta = verdict.to_dict()
        if verdict.action == "deny":
            content = verdict.reason if verdict.source == "sandbox" else (
                f"Refused by the workspace's tool policy: {verdict.reason}. Do not retry this call.")
            return Authorization(False, "deny", verdict.source, verdict.reason, verdict.rule,
                                 refusal=ToolResult(content, ok=False, meta={"error": "denied", "policy": policy_meta}))
        decided_by: str = "policy" if verdict.source == "rule" else verdict.source
        auth = Authorization(True, "allow", decided_by, verdict.reason, verdict.rule, policy=policy_meta,
                             target=verdict.target.display if verdict.target else None)
        if verdict.action != "ask":
            return auth
        if self.broker is None:
            content = (f"This call needs a person's approval ({verdict.reason}) and no one can be asked here; "
                       "it was not run.")
            return replace(auth, allowed=False, decision="deny", by="no-approver",
                           reason="it needs approval and no one can be asked",
                           refusal=ToolResult(content, ok=False, meta={"error": "denied", "policy": policy_meta}))
        preview = await self.executor.preview(call)
        if preview.error is not None and execute:
            # It would fail anyway: tell the model without bothering anyone.
            return replace(auth, allowed=False, decision="skipped", by="preview", reason=None, refusal=preview.error)
        preview.meta["reason"] = verdict.reason
        decision = await self.broker.request(workspace, call, preview, timeout=self.approval_timeout)
        auth = replace(auth, by=decision.by, approval_id=decision.approval_id)
        if not decision.allow:
            if decision.timed_out:
                content = "No one approved this call in time; it was not run."
            else:
                content = "The user denied this call; it was not run." + (
                    f" Reason: {decision.reason}" if decision.reason else "")
            reason = decision.reason or ("no one approved it in time" if decision.timed_out else "the user denied it")
            return replace(auth, allowed=False, decision="deny", reason=reason, refusal=ToolResult(
                content, ok=False, meta={"error": "timeout" if decision.timed_out else "denied",
                                         "policy": policy_meta}))
        if decision.remember:
            remembered = self.policy.remember(call, self.sandbox)
            if remembered and self.on_remember is not None:
                try:
                    self.on_remember(workspace, remembered)
                except Exception:
                    log.exception("could not save the remembered rule %s", remembered)
            auth = replace(auth, remembered=remembered)
        if "before_sha256" in preview.meta:
            auth = replace(auth, expect_sha256=preview.meta["before_sha256"])
        return auth

    async def gate(self, workspace: str, call: ToolCall | Mapping[str, Any]) -> Authorization:
        """Gate mode: the IDE runs the call, so only the decision is made (and audited) here."""
        started = time.monotonic()
        name, arguments, call_id = self._describe(call)
        try:
            parsed = coerce_call(call)
        except ToolArgumentError as exc:
            auth = Authorization(False, "deny", "arguments", str(exc))
        else:
            try:
                auth = await self.authorize(workspace, parsed, execute=False)
            except asyncio.CancelledError:
                self._done(workspace, name, arguments, call_id, ToolResult("cancelled", ok=False), started,
                           decision="cancelled", by="cancelled", event=TOOL_GATED)
                raise
        outcome = ToolResult(auth.reason or "", ok=auth.allowed, meta={"mode": "gate"})
        self._done(workspace, name, arguments, call_id, outcome, started, decision=auth.decision, by=auth.by,
                   rule=auth.rule, reason=None if auth.allowed else auth.reason, approval_id=auth.approval_id,
                   event=TOOL_GATED)
        return auth

    async def _run(self, workspace: str, call: ToolCall, started: float) -> ToolResult:
        auth = await self.authorize(workspace, call)
        if not auth.allowed:
            assert auth.refusal is not None
            return self._done(workspace, call.name, call.arguments, call.id, auth.refusal, started,
                              decision=auth.decision, by=auth.by, rule=auth.rule,
                              reason=auth.reason if auth.decision == "deny" else None,
                              approval_id=auth.approval_id)
        result = await self.executor.execute(call, workspace=workspace, expect_sha256=auth.expect_sha256,
                                             expect_path=auth.target)
        result.meta.setdefault("policy", auth.policy)
        if auth.remembered:
            result.meta["remembered_rule"] = auth.remembered
        return self._done(workspace, call.name, call.arguments, call.id, result, started, decision="allow",
                          by=auth.by, rule=auth.rule, approval_id=auth.approval_id)

    def _done(self, workspace: str, tool: str, arguments: Mapping[str, Any], call_id: str | None, result: ToolResult,
              started: float, *, decision: str, by: str, rule: str | None = None, reason: str | None = None,
              approval_id: str | None = None, event: str = TOOL_EXECUTED) -> ToolResult:
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
                    extra={key: result.meta[key] for key in ("exit_code", "timed_out", "undo_id", "error", "mode")
                           if key in result.meta},
                )
            except Exception:
                log.exception("could not write the tool audit log")
        if self.broker is not None:
            self.broker.publish({
                "type": event,
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
