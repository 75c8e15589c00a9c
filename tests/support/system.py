"""System parts a test needs (a program on PATH, an importable module): skip here, fail in CI.

Desktop and service tests run against real programs from Debian (Xvfb, chromium, systemd, ...).
On a developer's machine without one of them, the test is skipped with the reason. In CI
(`CI=true`) a missing part is a failure instead: a skipped desktop test there would hide that
the feature was never exercised.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip the current test, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_executable(name: str) -> str:
    """The absolute path of `name` on PATH, or skip (fail in CI)."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name!r} is not installed (see .ci/run for the Debian packages)")
        raise AssertionError("unreachable")
    return path


def require_module(name: str) -> ModuleType:
    """Import `name`, or skip (fail in CI) when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a GUI toolkit may raise more than ImportError without a display
        missing(f"Python module {name!r} cannot be imported: {exc}")
        raise AssertionError("unreachable") from exc
