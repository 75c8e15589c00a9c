"""docs/agent-frameworks.md: every example runs as written, in its own process, against a real
`serve` (no URL or token given: found through daemon.json); every install command names a real extra."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import StandIn
from tests.daemon.llm_client.conftest import ServeDaemon

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "agent-frameworks.md"
# What each Python example prints, in order of appearance. The stand-in's `tool-word_count` model
# calls word_count with the user's message (9 words) and answers from the result.
EXPECTED = [
    ["Tool #1: word_count", "Tool said: 9"],
    ["Tool said: 9"],
    ["Echo: Write a haiku about the sea"],
    ["tool-word_count\nEcho: What is 2+2?\nEcho: Write a haiku about the sea"],
]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_install_commands_name_real_extras() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    commands = [line.split("#")[0].strip() for block in blocks("sh") for line in block.splitlines()]
    installs = [re.fullmatch(r"python -m pip install -e '\.\[(\w+)\]'", c) for c in commands if "pip" in c]
    assert len(installs) == 2 and all(installs)
    for match in installs:
        assert match is not None
        extra = match.group(1)
        assert extra in ("strands", "langchain")
        for requirement in map(Requirement, extras[extra]):
            # what the extra installs is what the tests run with, and the test extra carries it too
            assert importlib.metadata.version(requirement.name) in requirement.specifier
            assert any(Requirement(r).name == requirement.name for r in extras["test"])


@pytest.mark.slow
async def test_examples_run_as_written(serve_daemon: ServeDaemon, standin: StandIn) -> None:
    examples = blocks("python")
    assert len(examples) == len(EXPECTED)
    served = await serve_daemon(config='[llm_api]\ndefault_model = "tool-word_count"\n',
                                env={"LLMTUNE_BASE_URL": standin.url})
    for code, expected in zip(examples, EXPECTED, strict=True):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, env=served.env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()[-3000:]
        for text in expected:
            assert text in out.decode(), (code, out.decode())
    tool_results = [m for r in standin.api.requests if r.json for m in r.json.get("messages", [])
                    if m.get("role") == "tool"]
    assert [m["content"] for m in tool_results] == ["9", "9"]  # each framework ran the Python tool
