"""Continue's config file, edited so its models go through the companion: merged, never clobbered.

The file is `config.yaml` in Continue's global directory (`$CONTINUE_GLOBAL_DIR`, else `~/.continue`);
when only a legacy `config.json` exists that one is edited, since a new YAML file would silently hide
it. Only the model entries whose `apiBase` points at the companion belong to this command: they are
updated in place (so their comments stay), added or dropped; every other model, rule, context
provider and comment is kept (ruamel.yaml round-trips them). Writing keeps a timestamped backup and
replaces the file atomically; when nothing changes, nothing is written.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from ..config.paths import write_private
from ..config.settings import is_loopback_host

GLOBAL_DIR_ENV = "CONTINUE_GLOBAL_DIR"
CHAT_ROLES = ("chat", "edit", "apply")
AUTOCOMPLETE_ROLES = ("autocomplete",)
# Continue's YAML format needs these at the top (its schema refuses a file without name and version).
HEADER = (("name", "Local config"), ("version", "1.0.0"), ("schema", "v1"))
LABEL = "LLMTune companion"

Format = Literal["yaml", "json"]


class ContinueConfigError(Exception):
    """Continue's file cannot be read or edited; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Target:
    path: Path
    format: Format

    @property
    def exists(self) -> bool:
        return self.path.exists()


@dataclass(frozen=True, slots=True)
class Entry:
    """One model entry this command owns."""

    model: str
    roles: tuple[str, ...]

    @property
    def name(self) -> str:
        suffix = ", autocomplete" if self.roles == AUTOCOMPLETE_ROLES else ""
        return f"{self.model} ({LABEL}{suffix})"


@dataclass(frozen=True, slots=True)
class Plan:
    target: Target
    old_text: str
    new_text: str
    notes: tuple[str, ...] = ()  # what was deliberately left alone, for the person running the command

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text

    def diff(self, redact: Mapping[str, str] | None = None) -> str:
        """A unified diff, with secrets replaced by what they are: `redact` maps a secret to its label, and
        every other `apiKey` value (another provider's key, an old token) is hidden."""
        lines = difflib.unified_diff(
            self.old_text.splitlines(keepends=True), self.new_text.splitlines(keepends=True),
            fromfile=f"{self.target.path} (now)" if self.old_text else "/dev/null",
            tofile=f"{self.target.path} (after)",
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        for secret, shown in (redact or {}).items():
            text = text.replace(secret, shown)
        return API_KEY_VALUE.sub(_hide_key, text)


# An `apiKey` value in YAML (`apiKey: v`, quoted or not) or JSON (`"apiKey": "v"`).
API_KEY_VALUE = re.compile(r"""(?P<key>["']?apiKey["']?\s*:\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,}]+)""")


def _hide_key(match: re.Match[str]) -> str:
    value = match.group("value").strip("\"'")
    if value.startswith("<") or value.startswith("${{"):  # a label we put there, or a reference to a secret
        return match.group(0)
    return match.group("key") + "<hidden>"


def continue_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    override = env.get(GLOBAL_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(env.get("HOME") or Path.home()).expanduser() / ".continue"


def find_target(environ: Mapping[str, str] | None = None) -> Target:
    directory = continue_dir(environ)
    yaml_path, json_path = directory / "config.yaml", directory / "config.json"
    if not yaml_path.exists() and json_path.exists():
        return Target(json_path, "json")
    return Target(yaml_path, "yaml")


def companion_base(url: str) -> Callable[[str], bool]:
    """Whether an `apiBase` points at the companion at `url` (any loopback name, same port, /v1)."""
    own = urlsplit(url)

    def owns(api_base: str) -> bool:
        try:
            parts = urlsplit(api_base.strip())
            port = parts.port
        except ValueError:
            return False
        return (parts.scheme == own.scheme and parts.hostname is not None and is_loopback_host(parts.hostname)
                and port == own.port and parts.path.rstrip("/") == own.path.rstrip("/"))

    return owns


def wanted_entries(chat: list[str], autocomplete: str | None) -> list[Entry]:
    entries = [Entry(model, CHAT_ROLES) for model in dict.fromkeys(chat)]
    if autocomplete:
        entries.append(Entry(autocomplete, AUTOCOMPLETE_ROLES))
    return entries


def plan(target: Target, entries: list[Entry], base_url: str, token: str, *, replace_autocomplete: bool = False
         ) -> Plan:
    """What the file would hold after this command; `plan(...).changed` is False on a second run.

    A legacy file has one autocomplete slot: someone else's model there is kept unless
    `replace_autocomplete` (the person named one with --autocomplete).
    """
    try:
        old = target.path.read_text(encoding="utf-8") if target.exists else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ContinueConfigError(f"{target.path}: cannot be read: {exc}") from None
    owns = companion_base(base_url)
    if target.format == "json":
        notes: list[str] = []
        text = _merge_json(target, old, entries, base_url, token, owns, replace_autocomplete, notes)
        return Plan(target, old, text, tuple(notes))
    return Plan(target, old, _merge_yaml(target, old, entries, base_url, token, owns))


def write(result: Plan) -> Path | None:
    """Back the file up (a timestamped copy beside it), then replace it atomically; the backup's path."""
    path = result.target.path
    backup = None
    if path.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = path.with_name(f"{path.name}.{stamp}.bak")
        counter = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.{stamp}-{counter}.bak")
            counter += 1
        shutil.copy2(path, backup)
        os.chmod(backup, 0o600)  # it may hold keys of other providers
    # 0600: the file holds the workspace's local token.
    write_private(path, result.new_text.encode("utf-8"))
    return backup


# -- YAML --------------------------------------------------------------------------------------


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, key order and quoting survive
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user wrote
    return yaml


def _yaml_entry(entry: Entry, base_url: str, token: str) -> dict[str, Any]:
    roles = CommentedSeq(entry.roles)
    roles.fa.set_flow_style()
    return {"name": entry.name, "provider": "openai", "model": entry.model, "apiBase": base_url,
            "apiKey": token, "roles": roles}


def _merge_yaml(target: Target, old: str, entries: list[Entry], base_url: str, token: str,
                owns: Callable[[str], bool]) -> str:
    yaml = _yaml()
    try:
        document = yaml.load(old) if old.strip() else None
    except YAMLError as exc:
        raise ContinueConfigError(f"{target.path}: not valid YAML ({exc}); fix it or move it away first") from None
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise ContinueConfigError(f"{target.path}: expected a mapping at the top (name, version, models, ...)")
    for position, (key, default) in enumerate(HEADER):
        if key not in document:
            document.insert(position, key, default)
    models = document.get("models")
    if models is None:
        models = CommentedSeq()
        document["models"] = models
    if not isinstance(models, CommentedSeq):
        raise ContinueConfigError(f"{target.path}: 'models' is not a list")
    _merge_entries(models, [_yaml_entry(e, base_url, token) for e in entries], "name", owns, roles=True)
    out = io.StringIO()
    yaml.dump(document, out)
    new = out.getvalue()
    # Unchanged content keeps its exact bytes (ruamel may respace what it did not touch).
    if old and yaml.load(new) == yaml.load(old):
        return old
    return new


def _roles(item: Mapping[str, Any]) -> tuple[str, ...]:
    roles = item.get("roles")
    if roles is None:  # Continue's default roles
        return ("chat", "edit", "apply", "summarize")
    return tuple(str(role) for role in roles) if isinstance(roles, list) else ()


def _merge_entries(items: list[Any], wanted: list[dict[str, Any]], name_key: str, owns: Callable[[str], bool],
                   *, roles: bool) -> None:
    """Update owned entries in place, drop owned ones no longer wanted, add the missing ones."""

    def key(item: Mapping[str, Any]) -> tuple[Any, ...]:
        return (item.get("model"), _roles(item)) if roles else (item.get("model"),)

    owned = [i for i, item in enumerate(items)
             if isinstance(item, dict) and isinstance(item.get("apiBase"), str) and owns(item["apiBase"])]
    by_key: dict[tuple[Any, ...], int] = {}
    for index in owned:
        by_key.setdefault(key(items[index]), index)
    kept: set[int] = set()
    missing: list[dict[str, Any]] = []
    for entry in wanted:
        found = by_key.pop(key(entry), None)
        if found is None:
            missing.append(entry)
            continue
        kept.add(found)
        current = items[found]
        for field, value in entry.items():
            if field == name_key and field in current:
                continue  # a name the user gave the entry stays
            if current.get(field) != value:
                current[field] = value
    insert_at = (max(owned) + 1) if owned else len(items)
    for index in sorted(set(owned) - kept, reverse=True):
        del items[index]
        if index < insert_at:
            insert_at -= 1
    for offset, entry in enumerate(missing):
        items.insert(insert_at + offset, entry)


# -- legacy JSON -------------------------------------------------------------------------------


def _merge_json(target: Target, old: str, entries: list[Entry], base_url: str, token: str,
                owns: Callable[[str], bool], replace_autocomplete: bool, notes: list[str]) -> str:
    try:
        document = json.loads(old) if old.strip() else {}
    except json.JSONDecodeError as exc:
        raise ContinueConfigError(f"{target.path}: not plain JSON ({exc}); remove its comments or move it "
                                  "away, then run this again") from None
    if not isinstance(document, dict):
        raise ContinueConfigError(f"{target.path}: expected an object at the top")
    models = document.setdefault("models", [])
    if not isinstance(models, list):
        raise ContinueConfigError(f"{target.path}: 'models' is not a list")

    def json_entry(entry: Entry) -> dict[str, Any]:
        return {"title": entry.name, "provider": "openai", "model": entry.model, "apiBase": base_url,
                "apiKey": token}

    _merge_entries(models, [json_entry(e) for e in entries if e.roles == CHAT_ROLES], "title", owns, roles=False)
    autocomplete = next((e for e in entries if e.roles == AUTOCOMPLETE_ROLES), None)
    current = document.get("tabAutocompleteModel")
    ours = isinstance(current, dict) and isinstance(current.get("apiBase"), str) and owns(current["apiBase"])
    if autocomplete is not None and (current is None or ours or replace_autocomplete):
        wanted = json_entry(autocomplete)
        if ours and isinstance(current, dict):
            wanted["title"] = current.get("title", wanted["title"])
        document["tabAutocompleteModel"] = wanted
    elif autocomplete is not None:
        notes.append("kept your tabAutocompleteModel (pass --autocomplete ID to replace it)")
    elif ours:
        del document["tabAutocompleteModel"]
    if old.strip() and json.loads(old) == document:
        return old
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
