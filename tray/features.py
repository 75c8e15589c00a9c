"""Which later commands exist in this installation, so the menu shows their items only then."""

from __future__ import annotations

import importlib.util
from functools import cache

from .model import Features


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package raises instead of returning None
        return False


@cache
def cli_commands() -> frozenset[str]:
    """The `llmtune-companion` subcommands this installation has."""
    import argparse

    from ..cli.main import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps its subcommands on a private attribute
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    return frozenset()


def detect(start_at_login: bool | None = None) -> Features:
    commands = cli_commands()
    return Features(
        dashboard=module_exists("llmtune_companion.dashboard"),
        service=module_exists("llmtune_companion.installers") and "service" in commands,
        connect=module_exists("llmtune_companion.cli.connect") and "connect" in commands,
        start_at_login=start_at_login,
    )
