"""cli.py as a person runs it: `python -m llmtune_companion ...` in a subprocess, settings in a temp dir.

The hosted stand-in runs in the test's event loop and the CLI in real subprocesses (awaited with
asyncio, so the loop keeps serving the stand-in while a command talks to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from unittest import mock

import aiohttp
import orjson
import pytest
from llmtune_companion import __version__
from llmtune_companion.cli.main import main
from llmtune_companion.config.paths import HOME_ENV, Paths
from llmtune_companion.config.settings import load_config

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.daemon.test_logs import (
    assert_same_secret,
    restore_logging,  # noqa: F401 (fixture)
)

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
MODELS_PATH = "/api/agent/models"
TIMEOUT = 30.0


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class CLI:
    """Runs the command line against one settings directory and keeps everything it printed."""

    paths: Paths
    env: dict[str, str]
    printed: list[str] = field(default_factory=list)

    async def run(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        """`token` prints a token by design: its output is not kept for assert_no_secret_printed."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmtune_companion", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**self.env, **env},
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else b""), TIMEOUT)
        result = Result(process.returncode if process.returncode is not None else -1, out.decode(), err.decode())
        self.printed += [result.out, result.err] if args[:1] != ("token",) else [result.err]
        return result

    async def inproc(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        """The same `main()` in this process (in a thread, so the loop keeps serving): cheaper than a
        subprocess, for the many variants of a command whose subprocess run is tested once."""

        def call() -> Result:
            out, err = io.StringIO(), io.StringIO()
            with (mock.patch.dict(os.environ, {**self.env, **env}, clear=True),
                  mock.patch.object(sys, "stdin", io.StringIO(stdin or "")),
                  contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse: --help, usage errors
                    code = exc.code if isinstance(exc.code, int) else 1
            return Result(code, out.getvalue(), err.getvalue())

        result = await asyncio.to_thread(call)
        self.printed += [result.out, result.err] if args[:1] != ("token",) else [result.err]
        return result

    async def serve(self, *args: str, log: Path) -> Served:
        stderr: IO[bytes] = log.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmtune_companion", "serve", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self.env,
        )
        stderr.close()
        served = Served(process, log, self)
        await served.ready()
        return served

    def assert_no_secret_printed(self) -> None:
        secrets = [WORKSPACE_KEY]
        if self.paths.secrets_file.exists():
            secrets += [ws.token for ws in load_config(self.paths, self.env).workspaces.values()]
        if self.paths.control_token_file.exists():
            secrets.append(self.paths.control_token_file.read_text().strip())
        leaked = [index for index, text in enumerate(self.printed) if any(secret in text for secret in secrets)]
        assert not leaked, f"a key or token was printed (outputs #{leaked})"  # never show the secret itself


@dataclass
class Served:
    process: asyncio.subprocess.Process
    log: Path
    cli: CLI
    url: str = ""
    banner: str = ""

    async def ready(self) -> None:
        assert self.process.stdout is not None
        lines = []
        while True:
            line = (await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)).decode()
            if not line:
                raise AssertionError(f"serve exited early: {self.log.read_text()}")
            lines.append(line)
            if line.startswith("  stop with"):
                break
        self.banner = "".join(lines)
        self.cli.printed.append(self.banner)
        match = re.search(r"serving at (http://\S+)/v1", self.banner)
        assert match, self.banner
        self.url = match.group(1)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), TIMEOUT)
        assert self.process.stdout is not None
        self.cli.printed += [(await self.process.stdout.read()).decode(), self.log.read_text()]
        return code


@pytest.fixture
def cli(home: Paths) -> CLI:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTUNE_")}
    env[HOME_ENV] = str(home.root)
    env["PYTHONUNBUFFERED"] = "1"
    return CLI(home, env)


@pytest.fixture
async def servers(cli: CLI) -> AsyncIterator[list[Served]]:
    """Every `serve` a test starts is stopped at the end, whatever happened."""
    started: list[Served] = []
    yield started
    for served in started:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- no daemon needed ----------------------------------------------------------------------------

SUBCOMMANDS = [
    ("serve",), ("token",), ("workspace",), ("workspace", "add"), ("workspace", "list"),
    ("workspace", "remove"), ("models",), ("status",),
]


async def test_version_and_help_on_every_command(cli: CLI) -> None:
    version, root = await asyncio.gather(cli.run("--version"), cli.run("--help"))
    assert version.code == 0 and version.out.strip() == f"llmtune-companion {__version__}"
    assert root.code == 0 and root.out.startswith("usage: llmtune-companion")
    for command in ("serve", "token", "workspace", "models", "status"):
        assert command in root.out
    for command in SUBCOMMANDS:
        result = await cli.inproc(*command, "--help")
        assert result.code == 0, (command, result.err)
        assert result.out.startswith(f"usage: llmtune-companion {' '.join(command)}"), command
    assert "--key-stdin" in (await cli.inproc("workspace", "add", "--help")).out
    assert "--refresh" in (await cli.inproc("models", "--help")).out
    assert "--json" in (await cli.inproc("status", "--help")).out
    bare = await cli.inproc()
    assert bare.code == 2 and "usage:" in bare.out
    unknown = await cli.inproc("frobnicate")
    assert unknown.code == 2 and "invalid choice" in unknown.err
    assert not cli.paths.secrets_file.exists()  # asking for help touches nothing


async def test_token_prints_exactly_the_token(cli: CLI) -> None:
    result = await cli.run("token")
    token = load_config(cli.paths).workspaces["default"].token
    assert result.code == 0 and result.err == ""
    assert_same_secret(result.out, token + "\n", "`token` must print the token and nothing else")
    assert_same_secret((await cli.inproc("token", "default")).out, result.out, "a second `token`")
    missing = await cli.inproc("token", "nope")
    assert missing.code == 1 and missing.out == "" and "no workspace named 'nope'" in missing.err


async def test_workspace_add_list_remove(cli: CLI) -> None:
    added = await cli.run("workspace", "add", "team", "--key-stdin", stdin=WORKSPACE_KEY + "\n")
    assert added.code == 0, added.err
    assert "team" in added.out
    config = load_config(cli.paths)
    assert_same_secret(config.workspaces["team"].api_key, WORKSPACE_KEY, "the key read from stdin")
    assert "[workspaces.team]" in cli.paths.config_file.read_text()
    assert_same_secret((await cli.inproc("token", "team")).out, config.workspaces["team"].token + "\n", "team token")

    listed = await cli.run("workspace", "list")
    assert listed.code == 0
    lines = {line.split()[0]: line for line in listed.out.splitlines()}
    assert set(lines) == {"default", "team"}
    assert "key from secrets" in lines["team"] and "no key" in lines["default"]
    as_json = await cli.inproc("workspace", "list", "--json")
    rows = {row["name"]: row for row in orjson.loads(as_json.out)}
    assert rows["team"] == {"name": "team", "has_key": True, "key_source": "secrets", "root": None,
                            "tools": "passthrough"}
    # The env key shows as such, still without the key itself.
    env_listed = await cli.inproc("workspace", "list", LLMTUNE_API_KEY=WORKSPACE_KEY)
    assert "key from env" in env_listed.out

    removed = await cli.run("workspace", "remove", "team")
    assert removed.code == 0 and "removed" in removed.out
    assert "team" not in load_config(cli.paths).workspaces
    again = await cli.inproc("workspace", "remove", "team")
    assert again.code == 1 and "no workspace named 'team'" in again.err
    default = await cli.inproc("workspace", "remove", "default")
    assert default.code == 2 and "cannot be removed" in default.err
    bad = await cli.inproc("workspace", "add", "no spaces", "--key-stdin", stdin="sk_x\n")
    assert bad.code == 2 and "not a valid workspace name" in bad.err
    empty = await cli.inproc("workspace", "add", "team2", "--key-stdin", stdin="\n")
    assert empty.code == 2 and "empty" in empty.err
    cli.assert_no_secret_printed()


async def test_status_when_not_running(cli: CLI) -> None:
    result = await cli.run("status")
    assert result.code == 3
    assert "not running" in result.out and str(cli.paths.root) in result.out and "config:    valid" in result.out
    as_json = await cli.run("status", "--json")
    assert as_json.code == 3
    report = orjson.loads(as_json.out)
    assert report["running"] is False and report["config"] == {"valid": True, "error": None}
    assert report["workspaces"][0]["name"] == "default"
    # A daemon.json left by a dead process does not count as running.
    cli.paths.daemon_file.write_bytes(orjson.dumps({"pid": 2**22 + 12345, "url": "http://127.0.0.1:9"}))
    assert (await cli.inproc("status")).code == 3
    # An invalid config is reported, naming the field.
    cli.paths.config_file.write_text('[server]\nport = "x"\n')
    broken = await cli.inproc("status")
    assert broken.code == 3 and "INVALID" in broken.out and "server.port" in broken.out
    broken_json = orjson.loads((await cli.inproc("status", "--json")).out)
    assert broken_json["config"]["valid"] is False and "server.port" in broken_json["config"]["error"]
    token = await cli.inproc("token")
    assert token.code == 2 and "server.port" in token.err and token.out == ""


async def test_models_in_process_without_a_daemon(cli: CLI, standin: StandIn) -> None:
    cli.env["LLMTUNE_BASE_URL"] = standin.url
    no_key = await cli.inproc("models")
    assert no_key.code == 0 and no_key.out.split() == ["echo", "llmtune-companion"]
    assert standin.api.calls_by_path[MODELS_PATH] == 0  # no key, nothing to ask the hosted API

    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY)).code == 0
    listed = await cli.run("models")
    assert listed.code == 0, listed.err
    ids = [line.split()[0] for line in listed.out.splitlines()]
    assert HOSTED in ids and "echo" in ids
    assert standin.api.calls_by_path[MODELS_PATH] == 1
    # The next run (a new process) is answered from the cache on disk ...
    again = await cli.run("models", "--json")
    assert HOSTED in [m["id"] for m in orjson.loads(again.out)]
    assert standin.api.calls_by_path[MODELS_PATH] == 1
    # ... unless it asks for a refresh.
    standin.api.add_model("workspace/fresh-one")
    refreshed = await cli.inproc("models", "--refresh")
    assert "workspace/fresh-one" in refreshed.out and refreshed.err == ""  # every backend answered
    assert standin.api.calls_by_path[MODELS_PATH] == 3  # the refresh, and the probe that checks every backend
    for request in standin.api.requests:
        assert_same_secret(request.headers["Authorization"], f"Bearer {WORKSPACE_KEY}", "key sent upstream")
    cli.assert_no_secret_printed()


@pytest.mark.usefixtures("restore_logging")  # the in-process `serve` configures logging before refusing
async def test_serve_refuses_a_bad_setup(cli: CLI) -> None:
    lan = await cli.inproc("serve", "--host", "0.0.0.0", "--port", "0")  # noqa: S104
    assert lan.code == 2 and "loopback" in lan.err
    cli.paths.config_file.write_text('[server]\nhots = "127.0.0.1"\n')
    broken = await cli.run("serve", "--port", "0")
    assert broken.code == 2 and "server.hots" in broken.err and "unknown key" in broken.err
    assert not cli.paths.daemon_file.exists()


# -- with a running daemon -----------------------------------------------------------------------


async def test_serve_and_manage_a_running_daemon(
    cli: CLI, standin: StandIn, servers: list[Served], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cli.env["LLMTUNE_BASE_URL"] = standin.url
    cli.paths.ensure()
    cli.paths.config_file.write_text("[upstream]\nmax_retries = 0\n")
    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY + "\n")).code == 0

    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    assert served.port > 0
    assert f"llmtune-companion {__version__} serving at http://127.0.0.1:{served.port}/v1" in served.banner
    info = orjson.loads(cli.paths.daemon_file.read_bytes())
    assert info["pid"] == served.process.pid and info["port"] == served.port and info["url"] == served.url

    token = (await cli.run("token")).out
    assert_same_secret(token, load_config(cli.paths).workspaces["default"].token + "\n", "`token` output")
    async with http.get(served.url + "/healthz") as response:
        assert response.status == 200

    status = await cli.run("status", "--no-probe")  # probes: tests/daemon/cli/test_status.py
    assert status.code == 0, status.err
    assert f"running at {served.url}" in status.out and "workspace: default (key from secrets)" in status.out
    as_json = await cli.inproc("status", "--json", "--no-probe")
    assert as_json.code == 0
    report = orjson.loads(as_json.out)
    assert report["running"] is True and report["url"] == served.url and report["config"]["valid"] is True
    assert {b["name"] for b in report["backends"]} >= {"llmtune", "echo"}

    models = await cli.run("models")
    assert models.code == 0, models.err
    assert HOSTED in models.out and "echo" in models.out
    assert standin.api.calls_by_path[MODELS_PATH] == 1
    assert HOSTED in [m["id"] for m in orjson.loads((await cli.inproc("models", "--json")).out)]
    assert standin.api.calls_by_path[MODELS_PATH] == 1  # the daemon's cache answered
    standin.api.add_model("workspace/just-trained")
    refreshed = await cli.run("models", "--refresh")
    assert "workspace/just-trained" in refreshed.out
    assert standin.api.calls_by_path[MODELS_PATH] == 3  # the refresh, and the probe that checks every backend
    # The stale marker shows in status once the upstream fails.
    standin.api.fail_next(500, times=3, path_prefix=MODELS_PATH)
    assert (await cli.inproc("models", "--refresh")).code == 0  # served from the cache, marked stale
    stale = await cli.inproc("status", "--no-probe")
    assert "STALE" in stale.out and "HTTP 500" in stale.out

    # A run with errors, to check the log afterwards.
    chat = {"model": HOSTED, "messages": [{"role": "user", "content": "hi"}]}
    standin.api.fail_next(500, path_prefix="/v1/chat",
                          body={"error": {"message": f"bad key {WORKSPACE_KEY}", "code": "X"}})
    async with http.post(served.url + "/v1/chat/completions", json=chat,
                         headers={"Authorization": f"Bearer {token.strip()}"}) as response:
        assert response.status == 500
        cli.printed.append(await response.text())

    # A second serve on the same settings directory, on any port, refuses, naming the running one.
    for port in (str(served.port), "0"):
        second = await cli.run("serve", "--port", port)
        assert second.code == 1 and "Traceback" not in second.err
        assert f"pid {served.process.pid}" in second.err and "already serving this settings directory" in second.err
        assert served.url in second.err and "llmtune-companion stop" in second.err
        assert orjson.loads(cli.paths.daemon_file.read_bytes())["pid"] == served.process.pid  # left alone
    assert (await cli.inproc("status")).code == 0  # the first one is still found
    # Another settings directory on the same port: the port is busy.
    other = {**cli.env, HOME_ENV: str(tmp_path / "other-home")}
    busy = await cli.run("serve", "--port", str(served.port), **other)
    assert busy.code == 1 and f"port {served.port}" in busy.err and "already in use" in busy.err

    assert await served.stop(signal.SIGTERM) == 0
    assert not cli.paths.daemon_file.exists()
    after = await cli.inproc("status")
    assert after.code == 3 and "not running" in after.out

    log_text = cli.paths.log_file.read_text(encoding="utf-8")
    assert "/v1/chat/completions" in log_text and "status=500" in log_text
    cli.printed.append(log_text)
    cli.assert_no_secret_printed()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signals_stop_serve_cleanly(
    cli: CLI, servers: list[Served], tmp_path: Path, http: aiohttp.ClientSession, sig: signal.Signals
) -> None:
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    assert cli.paths.daemon_file.exists()
    async with http.get(served.url + "/healthz") as response:
        assert response.status == 200
    assert await served.stop(sig) == 0
    assert not cli.paths.daemon_file.exists()
    assert "Traceback" not in served.log.read_text()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(served.url + "/healthz"):
            pass


async def test_commands_that_need_a_daemon_report_an_unreachable_one(cli: CLI) -> None:
    # daemon.json names a live pid (this test process) but nothing listens at that URL.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli.paths.ensure()
    cli.paths.daemon_file.write_bytes(orjson.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}"}))
    result = await cli.inproc("status")
    assert result.code == 1 and "cannot reach the daemon" in result.err
    result = await cli.inproc("models")
    assert result.code == 1 and "cannot reach the daemon" in result.err
