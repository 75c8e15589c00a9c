"""Adding and removing workspaces: keys and tokens in secrets.json, the rest in config.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError

from .keychain import KeychainError, KeyStore
from .paths import Paths
from .settings import (
    DEFAULT_WORKSPACE,
    NAME_PATTERN,
    ConfigError,
    SecretsStore,
    format_validation,
    new_token,
    read_settings,
    validate_settings,
)

KEY_PREFIX = "sk_"


def check_key(key: str) -> None:
    """An LLMTune workspace key looks like `sk_...`; anything else is most likely a paste mistake."""
    key = key.strip()
    if key.startswith(("lct_", "ctl_")):
        raise ConfigError("that is a token this companion made (lct_... / ctl_...), not an LLMTune key: paste "
                          "the workspace key (sk_...) from your LLMTune dashboard (--force stores it anyway)")
    if not key.startswith(KEY_PREFIX):
        raise ConfigError(f"an LLMTune key starts with {KEY_PREFIX!r}; this one does not (check what was "
                          "pasted; --force stores it anyway)")
    if any(char.isspace() for char in key):
        raise ConfigError("the key contains spaces or line breaks (check what was pasted; --force stores it anyway)")


def workspace_exists(paths: Paths, name: str) -> bool:
    """Named in config.toml or secrets.json (or `default`, which always exists)."""
    if name == DEFAULT_WORKSPACE or name in read_settings(paths.config_file).workspaces:
        return True
    return name in SecretsStore(paths.secrets_file).read()["workspaces"]


def check_root(paths: Paths, root: str) -> str:
    """An existing directory outside the companion's own settings (keys, tokens, journal live there)."""
    resolved = Path(root).expanduser().resolve()
    if not resolved.is_dir():
        raise ConfigError(f"root {root!r} is not a directory")
    settings_dir = paths.root.resolve()
    if resolved == settings_dir or resolved.is_relative_to(settings_dir):
        raise ConfigError(f"root {root!r} is the companion's own settings directory, which holds your keys: "
                          "choose your project's directory")
    return str(resolved)


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{name!r} is not a valid workspace name (letters, digits, . _ -)")


def _edit_config(paths: Paths, change: Any, *, validate: bool = False) -> None:
    """Edit config.toml keeping the user's comments and layout (tomlkit round-trips them)."""
    path = paths.config_file
    document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    change(document)
    paths.ensure()
    text = tomlkit.dumps(document)
    if validate:
        try:
            validate_settings(tomllib.loads(text))
        except ValidationError as exc:
            raise ConfigError(format_validation(exc, path.name)) from None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def add_workspace(paths: Paths, name: str, api_key: str | None) -> None:
    check_name(name)
    settings = read_settings(paths.config_file)  # refuse to edit a config that is already broken
    if api_key is not None and not api_key.strip():
        raise ConfigError("the key is empty")
    store = SecretsStore(paths.secrets_file)
    data = store.read()
    entry = data["workspaces"].setdefault(name, {})
    if api_key is not None:
        try:
            KeyStore(paths, settings.secrets.backend).write(name, entry, api_key.strip())
        except KeychainError as exc:
            raise ConfigError(f"the key was not saved: {exc}") from None
    entry.setdefault("token", new_token())
    paths.ensure()
    store.write(data)
    if name != DEFAULT_WORKSPACE:

        def add_table(document: Any) -> None:
            workspaces = document.setdefault("workspaces", tomlkit.table(is_super_table=True))
            if name not in workspaces:
                workspaces[name] = tomlkit.table()

        _edit_config(paths, add_table)


def rotate_token(paths: Paths, name: str) -> str:
    """A new local token for a workspace; the old one stops working (a running daemon reloads secrets.json)."""
    store = SecretsStore(paths.secrets_file)
    data = store.read()
    if name not in data["workspaces"] and not workspace_exists(paths, name):
        raise ConfigError(f"no workspace named {name!r} (see `llmtune-companion workspace list`)")
    token = new_token()
    data["workspaces"].setdefault(name, {})["token"] = token
    paths.ensure()
    store.write(data)
    return token


def remove_workspace(paths: Paths, name: str) -> bool:
    if name == DEFAULT_WORKSPACE:
        raise ConfigError("the default workspace cannot be removed (`workspace add default --key-stdin` "
                          "replaces its key)")
    store = SecretsStore(paths.secrets_file)
    data = store.read()
    entry = data["workspaces"].pop(name, None)
    found = entry is not None
    if entry is not None:
        KeyStore(paths, "auto").forget(name, entry)
    store.write(data)
    removed_from_config = False

    def drop_table(document: Any) -> None:
        nonlocal removed_from_config
        workspaces = document.get("workspaces")
        if workspaces is not None and name in workspaces:
            del workspaces[name]
            removed_from_config = True

    if paths.config_file.exists():
        _edit_config(paths, drop_table)
    return found or removed_from_config


def _workspace_table(document: Any, name: str) -> Any:
    workspaces = document.setdefault("workspaces", tomlkit.table(is_super_table=True))
    if name not in workspaces:
        workspaces[name] = tomlkit.table()
    return workspaces[name]


def set_workspace(paths: Paths, name: str, *, root: str | None = None, tools: str | None = None) -> None:
    """Set a workspace's tool root and mode in config.toml, validating the result before saving.

    `root=""` clears the root (it never means the current directory)."""
    check_name(name)
    read_settings(paths.config_file)
    if root:
        root = check_root(paths, root)

    def change(document: Any) -> None:
        table = _workspace_table(document, name)
        if root == "":
            table.pop("root", None)
        elif root is not None:
            table["root"] = root
        if tools is not None:
            table["tools"] = tools

    _edit_config(paths, change, validate=True)
    store = SecretsStore(paths.secrets_file)
    data = store.read()
    entry = data["workspaces"].setdefault(name, {})
    if "token" not in entry:
        entry["token"] = new_token()
        store.write(data)


def remember_allow_rule(paths: Paths, name: str, rule: str) -> None:
    """Append an allow rule to `[workspaces.NAME.policy]`, keeping the file's comments."""

    def change(document: Any) -> None:
        table = _workspace_table(document, name)
        policy = table.setdefault("policy", tomlkit.table())
        allow = policy.setdefault("allow", tomlkit.array())
        if rule not in allow:
            allow.append(rule)

    _edit_config(paths, change, validate=True)


def forget_keys(paths: Paths) -> list[str]:
    """Delete every key this settings directory keeps in the OS keychain (before the directory goes)."""
    try:
        data = SecretsStore(paths.secrets_file).read()
    except ConfigError:
        return []
    keys = KeyStore(paths, "auto")
    for name, entry in data["workspaces"].items():
        keys.forget(name, entry)
    return keys.warnings
