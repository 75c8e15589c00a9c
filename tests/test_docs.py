"""Every example in README.md and docs/*.md runs as shown, so the documentation cannot drift.

- every `llmtune-companion ...` in a shell block is parsed by the real argument parser (an unknown
  command or flag fails here), marked blocks included;
- every shell block (sh, bash, console) runs in bash with `set -euo pipefail` against a real daemon
  (`serve` in a subprocess, the hosted stand-in behind it), each page in a fresh settings directory;
  curl runs with --fail-with-body, so an HTTP error fails the example;
- python blocks run against the same daemon; toml, yaml and json blocks parse; a Continue
  config.yaml is checked for Continue's required keys and each of its models answers a chat sent as
  Continue sends it (Authorization: Bearer);
- a block that cannot run here carries `<!-- not-run: reason -->` on the line before its fence;
  test_not_run_blocks_are_listed_with_reasons lists them all.

Pages other helpers add to docs/ are picked up by the glob.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from llmtune_companion.cli.main import build_parser
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace
from llmtune_companion.instance import is_running

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.daemon.cli import test_main as test_cli
from tests.daemon.cli.test_main import CLI, Served

pytestmark = pytest.mark.slow

cli = test_cli.cli
servers = test_cli.servers

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("sh", "bash", "console", "shell")
DOCUMENTED = "127.0.0.1:8742"
BLOCK_TIMEOUT = 90.0
SETUP = re.compile(r"^(eval |export |[A-Z_][A-Z0-9_]*=\S+$)")
FENCE = re.compile(r"(?:<!-- not-run: (?P<reason>[^\n]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$",
                   re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [Block(page, text.count("\n", 0, match.start("body")), match.group("lang"), match.group("body"),
                  match.group("reason")) for match in FENCE.finditer(text)]


ALL = [block for page in PAGES for block in blocks(page)]


def commands(body: str) -> list[list[str]]:
    """The argument lists of every `llmtune-companion` in a shell block (continuations joined, comments cut)."""
    found = []
    joined = body.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.removeprefix("$ ")
        for match in re.finditer(r"llmtune-companion((?:[ \t]+[^\s;|&)]+)*)", line):
            words = shlex.split(match.group(1), comments=True)
            found.append(words)
    return found


def test_readme_fits_on_a_screen_and_keeps_the_quick_start() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    # .ci/run runs these two lines from this section, exactly as written.
    assert "python -m pip install -e . && llmtune-companion serve\n" in quick
    assert "python -m pip install -e '.[test]' && python -m pytest\n" in quick
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), f"README links to a missing page {link}"


def test_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not list {page.name}"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in SHELL and commands(b.body)], ids=lambda b: b.where)
def test_every_command_line_parses(block: Block) -> None:
    parser = build_parser()
    for words in commands(block.body):
        try:
            parser.parse_args(words)
        except SystemExit as exc:
            assert exc.code == 0, f"{block.where}: `llmtune-companion {shlex.join(words)}` does not parse"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang in ("toml", "yaml", "yml", "json", "python")],
                         ids=lambda b: b.where)
def test_data_blocks_parse(block: Block) -> None:
    if block.lang == "toml":
        tomllib.loads(block.body)
    elif block.lang in ("yaml", "yml"):
        assert yaml.safe_load(block.body) is not None
    elif block.lang == "json":
        json.loads(block.body)
    else:
        compile(block.body, block.where, "exec")


def test_not_run_blocks_are_listed_with_reasons() -> None:
    marked = [block for block in ALL if block.not_run is not None]
    listing = "\n".join(f"  {block.where}: {block.not_run}" for block in marked)
    print(f"examples not run ({len(marked)}):\n{listing}")
    for block in marked:
        assert len(block.not_run or "") >= 10, f"{block.where}: say why it cannot run"


# -- running the examples against a real daemon --------------------------------------------------


class Page:
    """One page's examples, in order, against one daemon in one fresh settings directory."""

    def __init__(self, cli: CLI, standin: StandIn, servers: list[Served], tmp_path: Path) -> None:
        self.cli, self.servers, self.tmp_path = cli, servers, tmp_path
        home = tmp_path / "home"
        (home / "code" / "myproject").mkdir(parents=True)  # the root the tool examples name
        bin_dir = str(Path(sys.executable).parent)
        cli.env.update(LLMTUNE_BASE_URL=standin.url, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
        self.port = 0
        # What earlier shell blocks of the page set up (`eval "$(...)"`, `export X=...`, `TOKEN=$(...)`),
        # run again before each later block, as in the one terminal a reader would use.
        self.prelude: list[str] = []
        self.count = 0

    async def ensure_daemon(self) -> None:
        """Examples may stop, restart or reset it: each one starts with a daemon and a key."""
        paths = self.cli.paths
        if not load_config(paths).workspaces["default"].has_key:
            add_workspace(paths, "default", WORKSPACE_KEY)
        if not is_running(paths):
            served = await self.cli.serve("--port", str(self.port), log=self.tmp_path / f"serve-{self.port}.log")
            self.servers.append(served)
            self.port = served.port

    def localize(self, text: str) -> str:
        return text.replace(DOCUMENTED, f"127.0.0.1:{self.port}")

    async def run(self, block: Block) -> None:
        await self.ensure_daemon()
        if block.lang in SHELL:
            script = self.localize(block.body).replace("curl ", "curl --fail-with-body ")
        elif block.lang == "python":
            self.count += 1
            program = self.tmp_path / f"example-{self.count}.py"
            program.write_text(self.localize(block.body), encoding="utf-8")
            script = f"python {shlex.quote(str(program))}"
        else:
            await self.continue_config(block)
            return
        argv = ["bash", "-euo", "pipefail", "-c", "\n".join([*self.prelude, script])]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.cli.env, cwd=self.tmp_path)
        out, err = await asyncio.wait_for(process.communicate(WORKSPACE_KEY.encode() + b"\n"), BLOCK_TIMEOUT)
        self.cli.printed.append(err.decode())
        assert process.returncode == 0, f"{block.where} failed ({process.returncode}):\n{out.decode()[-3000:]}\n" \
                                        f"{err.decode()[-3000:]}"
        if block.lang in SHELL:
            self.prelude += [line for line in self.localize(block.body).splitlines() if SETUP.match(line)]

    async def continue_config(self, block: Block) -> None:
        """A Continue config.yaml: Continue's required keys, and every model answers as Continue asks."""
        config = yaml.safe_load(self.localize(block.body))
        assert {"name", "version", "schema"} <= set(config) and config["schema"] == "v1", block.where
        token = load_config(self.cli.paths).workspaces["default"].token
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}/v1/models", headers=auth) as response:
                served = {model["id"] for model in (await response.json())["data"]}
            for model in config["models"]:
                assert model["provider"] == "openai" and model["apiKey"].startswith("lct_"), block.where
                if model["model"] not in served and model["model"].startswith("local/"):
                    continue  # an example for a machine with a local GPU server; none runs here
                async with http.post(model["apiBase"] + "/chat/completions",
                                     json={"model": model["model"], "messages": [{"role": "user", "content": "hi"}]},
                                     headers=auth) as response:
                    assert response.status == 200, f"{block.where}: {model['name']}: {await response.text()}"


def runnable(page: Path) -> list[Block]:
    return [block for block in blocks(page) if block.not_run is None and (
        block.lang in (*SHELL, "python") or (block.lang in ("yaml", "yml") and "schema: v1" in block.body))]


@pytest.mark.parametrize("page", [page for page in PAGES if runnable(page)], ids=lambda page: page.name)
async def test_examples_run(page: Path, cli: CLI, standin: StandIn, servers: list[Served], tmp_path: Path) -> None:
    runner = Page(cli, standin, servers, tmp_path)
    try:
        for block in runnable(page):
            await runner.run(block)
    finally:
        if is_running(cli.paths):  # `restart` leaves a daemon that `servers` did not start
            await cli.run("stop")
    cli.assert_no_secret_printed()
