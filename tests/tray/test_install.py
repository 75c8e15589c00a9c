"""What docs/tray.md tells a person to install is what the project declares and CI installs."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "tray.md").read_text(encoding="utf-8")


def test_the_tray_extra_and_the_gui_script_are_declared_and_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["tray"]
    assert {re.split(r"[<>=;\s]", item)[0] for item in extra} == {"pystray", "Pillow", "PyGObject"}
    assert "PyGObject>=3.42,<3.51; sys_platform == 'linux'" in extra
    assert set(extra) <= set(project["optional-dependencies"]["test"])  # the tests drive the same parts
    assert project["gui-scripts"] == {"llmtune-companion-tray": "llmtune_companion.tray.app:gui_main"}
    scripts = importlib.metadata.entry_points(group="gui_scripts")
    [script] = [ep for ep in scripts if ep.name == "llmtune-companion-tray"]
    assert callable(script.load())
    assert "python -m pip install 'llmtune-companion[tray]'" in DOC


def test_the_debian_packages_in_the_doc_are_the_ones_ci_installs() -> None:
    [command] = re.findall(r"`sudo apt install ([^`]+)`", DOC)
    ci = (ROOT / ".ci" / "run").read_text()
    for package in command.split():
        assert re.search(rf"(?<![\w.-]){re.escape(package)}(?![\w.-])", ci), package
