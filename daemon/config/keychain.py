"""LLMTune keys in the OS keychain: the macOS Keychain, Windows Credential Manager or the Secret
Service on Linux, through the `keyring` package.

Only a keychain that encrypts counts: keyring's fail/null backends and plaintext files do not, and
then the keys stay in the 0600 secrets.json. Every call is time-limited, because a locked keychain
may wait for a person to unlock it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .paths import Paths

SERVICE = "llmtune-companion"
TIMEOUT = 10.0
# keyring backends that store nothing, or store it in a plain file.
NOT_A_KEYCHAIN = ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")

T = TypeVar("T")


class KeychainError(Exception):
    """The keychain refused or did not answer; the message never holds a key."""


def _limited(call: Callable[[], T], what: str) -> T:
    """Run `call` on a daemon thread for at most TIMEOUT seconds (a hung keychain must not hang us)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except Exception as exc:  # reported by type only: a backend's message could quote what it was given
            box["error"] = type(exc).__name__

    thread = threading.Thread(target=target, name="keychain", daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if thread.is_alive():
        raise KeychainError(f"the keychain did not answer within {TIMEOUT:.0f}s ({what})")
    if "error" in box:
        raise KeychainError(f"the keychain refused to {what} ({box['error']})")
    return box["value"]  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Keychain:
    """The keys of one settings directory: one keychain item per workspace."""

    service: str
    backend: Any  # keyring.backend.KeyringBackend
    name: str  # what status shows, e.g. "SecretService Keyring"

    def get(self, workspace: str) -> str | None:
        value = _limited(lambda: self.backend.get_password(self.service, workspace), "read a key")
        return value if isinstance(value, str) and value else None

    def set(self, workspace: str, key: str) -> None:
        _limited(lambda: self.backend.set_password(self.service, workspace, key), "store a key")
        if self.get(workspace) != key:
            raise KeychainError("the keychain did not keep the key")

    def delete(self, workspace: str) -> None:
        if self.get(workspace) is not None:
            _limited(lambda: self.backend.delete_password(self.service, workspace), "delete a key")


def _is_keychain(backend: Any) -> bool:
    if getattr(backend, "priority", 0) < 1:
        return False
    parts = getattr(backend, "backends", None) or [backend]  # a chainer holds several
    return not any(type(part).__module__.startswith(NOT_A_KEYCHAIN) for part in parts)


def service_name(paths: Paths) -> str:
    """Per settings directory, so two directories (or tests) never share a key."""
    return f"{SERVICE}:{paths.root}"


def open_keychain(paths: Paths) -> Keychain | None:
    """The OS keychain when one works here, else None (then keys stay in secrets.json)."""
    try:
        import keyring
    except ImportError:
        return None
    try:
        backend = _limited(keyring.get_keyring, "start")
    except KeychainError:
        return None
    if not _is_keychain(backend):
        return None
    keychain = Keychain(service_name(paths), backend, getattr(backend, "name", type(backend).__name__))
    try:
        keychain.get("-probe-")  # answers at all (not locked behind a prompt nobody sees)
    except KeychainError:
        return None
    return keychain


# secrets.json marks a workspace whose key is in the keychain with this field (the key is not in the file).
WHERE_FIELD = "api_key_in"


class KeyStore:
    """Where the LLMTune keys of one settings directory live, per `secrets.backend`; moves them there.

    The keychain is opened only when a key is read or written: importing keyring costs more than
    a CLI command that touches no key should pay.
    """

    def __init__(self, paths: Paths, setting: str) -> None:
        self.paths = paths
        self.setting = setting  # "auto", "keyring" or "file"
        self.warnings: list[str] = []
        self._opened = False
        self._keychain: Keychain | None = None

    def keychain(self) -> Keychain | None:
        """The keychain new keys go to; None means secrets.json. Raises when "keyring" was asked for and none works."""
        if self.setting == "file":
            return None
        if not self._opened:
            self._opened = True
            self._keychain = open_keychain(self.paths)
        if self._keychain is None and self.setting == "keyring":
            raise KeychainError('secrets.backend = "keyring", but no OS keychain works here (on Linux: is a '
                                'Secret Service such as gnome-keyring running and unlocked?)')
        return self._keychain

    @property
    def backend(self) -> str:
        """"keyring" or "file" once a key was handled; "auto" while no key needed deciding."""
        if self._keychain is not None:
            return "keyring"
        return "file" if self.setting == "file" or self._opened else "auto"

    @property
    def keychain_name(self) -> str | None:
        return self._keychain.name if self._keychain is not None else None

    def read(self, name: str, entry: dict[str, Any]) -> tuple[str | None, str, bool]:
        """The workspace's key, where it is ("keyring", "secrets", "none"), and whether `entry` changed
        because the key moved to where `secrets.backend` wants it."""
        if entry.get(WHERE_FIELD) == "keyring":
            return self._read_from_keychain(name, entry)
        key = entry.get("api_key") or None
        if not isinstance(key, str):
            return None, "none", False
        keychain = self.keychain()
        if keychain is None:
            return key, "secrets", False
        try:
            keychain.set(name, key)
        except KeychainError as exc:
            if self.setting == "keyring":
                raise
            self.warnings.append(f"workspace {name!r}: its key stays in secrets.json: {exc}")
            return key, "secrets", False
        entry.pop("api_key", None)
        entry[WHERE_FIELD] = "keyring"
        return key, "keyring", True

    def _read_from_keychain(self, name: str, entry: dict[str, Any]) -> tuple[str | None, str, bool]:
        keychain = open_keychain(self.paths) if self.setting == "file" else self.keychain()
        if keychain is None:
            self.warnings.append(f"workspace {name!r}: its key is in the OS keychain, which does not answer")
            return None, "none", False
        try:
            key = keychain.get(name)
        except KeychainError as exc:
            self.warnings.append(f"workspace {name!r}: {exc}")
            return None, "none", False
        if key is None:
            self.warnings.append(f"workspace {name!r}: its key is missing from the OS keychain")
            return None, "none", False
        if self.setting != "file":
            return key, "keyring", False
        # secrets.backend = "file": the key comes back into secrets.json.
        entry["api_key"] = key
        entry.pop(WHERE_FIELD, None)
        try:
            keychain.delete(name)
        except KeychainError as exc:
            self.warnings.append(f"workspace {name!r}: a copy of its key stays in the keychain: {exc}")
        return key, "secrets", True

    def write(self, name: str, entry: dict[str, Any], key: str) -> None:
        """Keep a new key for the workspace where `secrets.backend` says."""
        keychain = self.keychain()
        if keychain is not None:
            keychain.set(name, key)
            entry.pop("api_key", None)
            entry[WHERE_FIELD] = "keyring"
        else:
            entry["api_key"] = key
            entry.pop(WHERE_FIELD, None)

    def forget(self, name: str, entry: dict[str, Any]) -> None:
        """Delete the workspace's key from the keychain, if it is there."""
        if entry.get(WHERE_FIELD) != "keyring":
            return
        keychain = open_keychain(self.paths)
        if keychain is None:
            self.warnings.append(f"workspace {name!r}: the OS keychain does not answer; its key stays there")
            return
        try:
            keychain.delete(name)
        except KeychainError as exc:
            self.warnings.append(f"workspace {name!r}: {exc}")
