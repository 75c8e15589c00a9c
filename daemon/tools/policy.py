"""Per-workspace rules deciding whether a tool call runs, needs a person's approval, or is refused.

Rules are strings `Tool` or `Tool(pattern)` in three lists, checked in this order:

1. `deny`: the first matching rule refuses the call;
2. protected paths (`.git/`, `.env*`, `protected_paths` globs) ask, or are refused when
   `protected = "deny"`; the companion's own settings directory is always refused;
3. `ask`: the first matching rule asks a person;
4. `allow`: the first matching rule lets the call run;
5. defaults: read_file and list_directory run; write_file, search_replace and run_terminal ask.
   (A path outside the workspace root never gets this far: the sandbox refuses it.)

Patterns:

- path tools (read_file, write_file, search_replace, list_directory): a glob on the path relative
  to the root, gitignore-style: `*` and `?` stay within one directory level, `**` crosses levels,
  `[abc]` is a class, a pattern without a `/` matches the name at any depth (`*.md`), one with a `/`
  (or starting with `/`) is anchored at the root (`src/**`, `/setup.py`); `dir/**` also matches `dir`
  itself; a trailing `/` means everything below. Allow rules match the real (symlink-resolved) path;
  deny and ask rules match it or the path as the model wrote it.
- run_terminal: the command line. `*` matches anything (`npm test*` is a prefix rule; `npm run
  test:*` is accepted too); without `*` the rule is the exact command. `\\*` is a literal star.
  An allow rule with a wildcard never matches a command containing shell operators (`;`, `&`, `|`,
  `<`, `>`, backticks, `$(`, a newline), so `run_terminal(git status*)` does not let through
  `git status; rm -rf ~`. Deny and ask rules match the whole command or any of its pieces split
  on those operators (after leading `VAR=value` assignments). That is a best effort: a shell can
  always hide a command (`sh -c "$(echo ...)"`), which is why run_terminal asks by default.
- tool names: the five names, or `Read`, `Write`, `Edit`, `Bash`, `LS` (case-insensitive) as other
  agent tools spell them; a bare `*` matches every tool.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from .definitions import (
    LIST_DIRECTORY,
    PATH_TOOLS,
    READ_FILE,
    RUN_TERMINAL,
    SEARCH_REPLACE,
    TOOL_NAMES,
    WRITE_FILE,
    ToolCall,
)
from .sandbox import ResolvedPath, Sandbox, SandboxError

Action = Literal["allow", "ask", "deny"]

DEFAULT_ACTIONS: dict[str, Action] = {
    READ_FILE: "allow",
    LIST_DIRECTORY: "allow",
    WRITE_FILE: "ask",
    SEARCH_REPLACE: "ask",
    RUN_TERMINAL: "ask",
}

TOOL_ALIASES: dict[str, str] = {
    **{name: name for name in TOOL_NAMES},
    "read": READ_FILE,
    "write": WRITE_FILE,
    "edit": SEARCH_REPLACE,
    "multiedit": SEARCH_REPLACE,
    "bash": RUN_TERMINAL,
    "shell": RUN_TERMINAL,
    "terminal": RUN_TERMINAL,
    "ls": LIST_DIRECTORY,
    "list": LIST_DIRECTORY,
}

_RULE = re.compile(r"^\s*(?P<tool>[A-Za-z_*][A-Za-z0-9_*-]*)\s*(?:\((?P<pattern>.*)\))?\s*$", re.DOTALL)
_SHELL_OPERATORS = re.compile(r"[;&|<>`\n\r]|\$\(")
_SPLIT = re.compile(r"\|\||&&|[;&|\n\r`()]|\$\(")
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|\"[^\"]*\"|\S*)\s+)+")
_SPACES = re.compile(r"\s+")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_FLAGS = re.IGNORECASE if sys.platform == "win32" else 0


# ---- globs ------------------------------------------------------------------------------------------


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif pattern.startswith("**", i):
            at_start = i == 0 or pattern[i - 1] == "/"
            end = i + 2
            if at_start and end < n and pattern[end] == "/":
                out.append("(?:.*/)?")
                i = end + 1
            elif at_start and end == n and out and out[-1] == "/":
                out[-1] = "(?:/.*)?"  # 'dir/**' matches dir and everything below it
                i = end
            else:
                out.append(".*")
                i = end
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            close = pattern.find("]", i + 2)
            if close < 0:
                out.append(re.escape(char))
                i += 1
                continue
            body = pattern[i + 1 : close]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def compile_path_glob(pattern: str) -> re.Pattern[str]:
    """A gitignore-style glob (see the module doc) as a regex over root-relative '/'-paths."""
    text = pattern.strip()
    anchored = False
    if text.startswith("./"):
        text, anchored = text[2:], True
    if text.startswith("/"):
        text, anchored = text.lstrip("/"), True
    if text.endswith("/") and text.strip("/"):
        text = text + "**"
    if "/" in text:
        anchored = True
    if text in ("", "."):
        return re.compile(r"^\.$")
    body = _translate(text)
    if not anchored:
        body = "(?:.*/)?" + body
    try:
        return re.compile(f"^{body}$", re.DOTALL | _FLAGS)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid path pattern ({exc})") from exc


def escape_glob(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def escape_command(command: str) -> str:
    """A command line as a pattern matching exactly it (stars and backslashes escaped)."""
    return command.replace("\\", "\\\\").replace("*", "\\*")


def _normalise_command(command: str) -> str:
    return _SPACES.sub(" ", command.strip())


def compile_command_pattern(pattern: str) -> tuple[re.Pattern[str], bool]:
    """(regex, has_wildcard) for a run_terminal pattern: `*` anything, `\\*` a star, `:*` a prefix."""
    text = _normalise_command(pattern)
    if text.endswith(":*"):
        text = text[:-2] + "*"
    out: list[str] = []
    wildcard = False
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(re.escape(text[i + 1]))
            i += 2
            continue
        if text[i] == "*":
            out.append(".*")
            wildcard = True
        else:
            out.append(re.escape(text[i]))
        i += 1
    if text.endswith(" *") and wildcard:
        # 'git log *' also matches plain 'git log'
        out[-2:] = ["(?: .*)?"]
    return re.compile("^" + "".join(out) + "$", re.DOTALL), wildcard


def command_pieces(command: str) -> list[str]:
    """The simple commands inside a command line (split on operators, assignments dropped)."""
    pieces = []
    for part in _SPLIT.split(command):
        part = _ASSIGNMENT.sub("", part.strip().lstrip("{").strip())
        if part:
            pieces.append(_normalise_command(part))
    return pieces


# ---- rules ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    tool: str  # a canonical tool name, or "*"
    pattern: str | None
    text: str
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _wildcard: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> Rule:
        """`Tool` or `Tool(pattern)`; raises ValueError with a message naming what is wrong."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("an empty rule")
        match = _RULE.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a rule; write Tool or Tool(pattern), e.g. write_file(src/**)")
        name, pattern = match["tool"], match["pattern"]
        if name == "*":
            if pattern is not None:
                raise ValueError(f"{text!r}: '*' matches every tool and takes no pattern")
            return cls("*", None, "*")
        tool = TOOL_ALIASES.get(name.lower())
        if tool is None:
            raise ValueError(f"{text!r}: unknown tool {name!r} (known: {', '.join(TOOL_NAMES)})")
        if pattern is None:
            return cls(tool, None, tool)
        if not pattern.strip():
            raise ValueError(f"{text!r}: empty pattern; write {tool} alone to match every call")
        pattern = pattern.strip()
        if tool == RUN_TERMINAL:
            regex, wildcard = compile_command_pattern(pattern)
            return cls(tool, pattern, f"{tool}({pattern})", regex, wildcard)
        return cls(tool, pattern, f"{tool}({pattern})", compile_path_glob(pattern), True)

    def __str__(self) -> str:
        return self.text

    def matches(self, call: ToolCall, target: ResolvedPath | None, *, strict: bool) -> bool:
        """`strict` for allow rules (real path only; wildcards never match compound commands)."""
        if self.tool != "*" and self.tool != call.name:
            return False
        if self._regex is None:
            return True
        if call.name == RUN_TERMINAL:
            return self._matches_command(call.command or "", strict=strict)
        if target is None:
            return False
        candidates = [target.display] if strict else [target.display, target.lexical_rel.as_posix()]
        return any(self._regex.match(candidate) for candidate in candidates)

    def _matches_command(self, command: str, *, strict: bool) -> bool:
        assert self._regex is not None
        whole = _normalise_command(command)
        if strict:
            if self._wildcard and _SHELL_OPERATORS.search(command):
                return False
            return bool(self._regex.match(whole))
        return any(self._regex.match(piece) for piece in (whole, *command_pieces(command)))


def parse_rules(texts: Sequence[str]) -> list[Rule]:
    rules = []
    for index, text in enumerate(texts):
        try:
            rules.append(Rule.parse(text))
        except ValueError as exc:
            raise ValueError(f"[{index}]: {exc}") from None
    return rules


class ToolPolicySettings(BaseModel):
    """The `allow` / `ask` / `deny` lists of one workspace (e.g. a `[workspaces.NAME.tools]` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: tuple[str, ...] = ()
    ask: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    # What protected paths (.git/, .env*, protected_paths) get: a question, or a refusal.
    protected: Literal["ask", "deny"] = "ask"
    # More protected paths, as path globs (e.g. "*.pem", "secrets/**").
    protected_paths: tuple[str, ...] = ()

    @field_validator("allow", "ask", "deny")
    @classmethod
    def _rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_rules(value)
        return value

    @field_validator("protected_paths")
    @classmethod
    def _globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, pattern in enumerate(value):
            try:
                compile_path_glob(pattern)
            except ValueError as exc:
                raise ValueError(f"[{index}]: {exc}") from None
        return value


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    action: Action
    reason: str
    # "rule" (see `rule`), "protected", "sandbox" (the path is outside the root) or "default".
    source: Literal["rule", "protected", "sandbox", "default"]
    rule: str | None = None
    target: ResolvedPath | None = None
    protected: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "reason": self.reason, "source": self.source, "rule": self.rule,
                "path": self.target.display if self.target else None, "protected": self.protected}


class Policy:
    """The rules of one workspace, plus the allow rules people added by remembering an approval."""

    def __init__(self, settings: ToolPolicySettings | None = None) -> None:
        self._settings = settings or ToolPolicySettings()
        self.deny = parse_rules(self._settings.deny)
        self.ask = parse_rules(self._settings.ask)
        self.allow = parse_rules(self._settings.allow)
        self.remembered: list[str] = []
        self._protected_globs = [(text, compile_path_glob(text)) for text in self._settings.protected_paths]

    @property
    def settings(self) -> ToolPolicySettings:
        """The settings including remembered rules (what to write back to the config)."""
        return self._settings.model_copy(update={"allow": tuple(rule.text for rule in self.allow)})

    def _protection(self, target: ResolvedPath) -> tuple[str | None, str | None]:
        if target.protected:
            return target.protected, target.protection_text
        for text, regex in self._protected_globs:
            if regex.match(target.display) or regex.match(target.lexical_rel.as_posix()):
                return "custom", f"a protected path ({text})"
        return None, None

    def evaluate(self, call: ToolCall, sandbox: Sandbox) -> PolicyDecision:
        """What to do with `call` (its arguments already normalised) in `sandbox`'s workspace."""
        target: ResolvedPath | None = None
        if call.name in PATH_TOOLS:
            try:
                target = sandbox.resolve(call.path or "")
            except SandboxError as exc:
                return PolicyDecision("deny", str(exc), "sandbox")
        for rule in self.deny:
            if rule.matches(call, target, strict=False):
                return PolicyDecision("deny", f"refused by the rule deny: {rule}", "rule", rule.text, target)
        if target is not None:
            kind, text = self._protection(target)
            if kind == "companion":
                return PolicyDecision("deny", f"{target.display!r} is in {text}; tools never touch it",
                                      "protected", None, target, kind)
            if kind:
                action: Action = self._settings.protected
                return PolicyDecision(action, f"{target.display!r} is {text}", "protected", None, target, kind)
        for rule in self.ask:
            if rule.matches(call, target, strict=False):
                return PolicyDecision("ask", f"the rule ask: {rule}", "rule", rule.text, target)
        for rule in self.allow:
            if rule.matches(call, target, strict=True):
                return PolicyDecision("allow", f"the rule allow: {rule}", "rule", rule.text, target)
        action = DEFAULT_ACTIONS.get(call.name, "ask")
        return PolicyDecision(action, f"default for {call.name}", "default", None, target)

    @staticmethod
    def narrowest_rule(call: ToolCall, sandbox: Sandbox) -> str | None:
        """The allow rule for exactly this call: the exact path, or the exact command line.

        None when the call cannot be allowed by a rule (outside the root, or a protected path).
        """
        if call.name == RUN_TERMINAL:
            command = _normalise_command(call.command or "")
            if not command:
                return None
            return f"{RUN_TERMINAL}({escape_command(command)})"
        if call.name not in PATH_TOOLS:
            return None
        try:
            target = sandbox.resolve(call.path or "")
        except SandboxError:
            return None
        if target.protected:
            return None
        return f"{call.name}(/{escape_glob(target.display)})"

    def remember(self, call: ToolCall, sandbox: Sandbox) -> str | None:
        """Append the narrowest allow rule for `call`; returns its text (None if not rememberable)."""
        text = self.narrowest_rule(call, sandbox)
        if text is None:
            return None
        if text not in (rule.text for rule in self.allow):
            self.allow.append(Rule.parse(text))
            self.remembered.append(text)
        return text
