"""The skip-here, fail-in-CI rule for missing system parts."""

from __future__ import annotations

import pytest

from tests.support import system


def test_missing_executable_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-program-here"):
        system.require_executable("no-such-program-here")


def test_missing_executable_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and 'no-such-program-here'"):
        system.require_executable("no-such-program-here")


def test_missing_module_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_here"):
        system.require_module("no_such_module_here")


def test_present_parts_are_returned() -> None:
    assert system.require_executable("sh").endswith("/sh")
    assert system.require_module("json").dumps([]) == "[]"
