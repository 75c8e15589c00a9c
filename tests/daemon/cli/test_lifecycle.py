"""`stop`, `restart`, `logs`, `reset`, `token --rotate`, `jobs remove` and serve's own checks, as a person runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from llmtune_companion.cli.main import build_parser
from llmtune_companion.config.settings import load_config
from llmtune_companion.instance import InstanceLock, is_running

from tests.conftest import WORKSPACE_KEY, closed_port
from tests.daemon.cli import test_main as test_cli
from tests.daemon.cli.test_main import CLI, Served
from tests.daemon.test_logs import assert_same_secret

cli = test_cli.cli
servers = test_cli.servers


async def healthz(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as response:
        return response.status


async def test_stop_ends_the_running_daemon_gracefully(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    not_running = await cli.run("stop")
    assert not_running.code == 0 and "not running" in not_running.out
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    assert is_running(cli.paths)
    stopped = await cli.run("stop")
    assert stopped.code == 0, stopped.err
    assert f"stopped the daemon (pid {served.process.pid}" in stopped.out
    assert await asyncio.wait_for(served.process.wait(), 30) == 0  # a clean exit, as after SIGTERM
    assert not cli.paths.daemon_file.exists() and not is_running(cli.paths)
    assert "Traceback" not in served.log.read_text()
    with pytest.raises(aiohttp.ClientConnectionError):
        await healthz(served.url)


async def test_shutdown_needs_the_control_token(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    token = load_config(cli.paths).workspaces["default"].token
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": f"Bearer {token}"}):  # none, and a workspace token
            async with http.post(served.url + "/companion/v1/shutdown", headers=headers) as response:
                assert response.status == 401
                assert orjson.loads(await response.read())["error"]["code"] in ("missing_token", "invalid_token")
        control = cli.paths.control_token_file.read_text().strip()
        async with http.post(served.url + "/companion/v1/shutdown",
                             headers={"Authorization": f"Bearer {control}"}) as response:
            assert response.status == 202 and (await response.json())["stopping"] is True
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


async def test_restart_starts_it_again_on_the_same_port(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    restarted = await cli.run("restart")
    try:
        assert restarted.code == 0, restarted.err
        assert await asyncio.wait_for(served.process.wait(), 30) == 0
        info = orjson.loads(cli.paths.daemon_file.read_bytes())
        assert info["port"] == served.port and info["pid"] != served.process.pid
        assert f"restarted: serving at {served.url}/v1" in restarted.out and str(cli.paths.log_file) in restarted.out
        assert await healthz(served.url) == 200
    finally:
        stopped = await cli.run("stop")
    assert stopped.code == 0 and "stopped" in stopped.out and not is_running(cli.paths)


async def test_a_second_serve_never_touches_the_first(cli: CLI, tmp_path: Path) -> None:
    """The lock is the OS's: whoever holds it, a second serve refuses before binding or writing."""
    cli.paths.ensure()
    cli.paths.daemon_file.write_bytes(orjson.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:1"}))
    with InstanceLock(cli.paths):
        refused = await cli.run("serve", "--port", "0")
        assert refused.code == 1 and f"pid {os.getpid()}" in refused.err
        assert "already serving this settings directory" in refused.err and "Traceback" not in refused.err
        assert orjson.loads(cli.paths.daemon_file.read_bytes())["pid"] == os.getpid()
    assert not is_running(cli.paths)


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
async def test_serve_refuses_a_bad_port(cli: CLI, port: str) -> None:
    result = await cli.inproc("serve", "--port", port)
    assert result.code == 2 and "is not a port number (1-65535" in result.err and "Traceback" not in result.err
    assert not cli.paths.daemon_file.exists()


async def test_serve_refuses_a_bad_log_level(cli: CLI) -> None:
    result = await cli.run("serve", "--port", "0", LLMTUNE_COMPANION_LOG_LEVEL="LOUD")
    assert result.code == 2 and "Traceback" not in result.err
    assert "LLMTUNE_COMPANION_LOG_LEVEL='LOUD' is not a log level" in result.err and "DEBUG" in result.err


async def test_logs_prints_the_tail_and_follows(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    missing = await cli.inproc("logs")
    assert missing.code == 1 and "no log yet" in missing.err and str(cli.paths.log_file) in missing.err
    cli.paths.ensure()
    cli.paths.log_file.write_text("".join(f"line {n}\n" for n in range(100)), encoding="utf-8")
    tail = await cli.inproc("logs", "-n", "3")
    assert tail.code == 0 and tail.out == "line 97\nline 98\nline 99\n"
    assert (await cli.inproc("logs")).out.count("\n") == 50
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmtune_companion", "logs", "-f", "-n", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli.env)
    try:
        assert follower.stdout is not None
        assert await asyncio.wait_for(follower.stdout.readline(), 30) == b"line 99\n"
        with cli.paths.log_file.open("a", encoding="utf-8") as log:
            log.write("appended later\n")
        assert await asyncio.wait_for(follower.stdout.readline(), 30) == b"appended later\n"
        # Rotation: the file is replaced; the follower reads the new one from its start.
        cli.paths.log_file.rename(cli.paths.log_file.with_suffix(".log.1"))
        cli.paths.log_file.write_text("after rotation\n", encoding="utf-8")
        assert await asyncio.wait_for(follower.stdout.readline(), 30) == b"after rotation\n"
    finally:
        follower.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(follower.wait(), 30) == 130


async def test_token_rotate(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    old = load_config(cli.paths).workspaces["default"].token
    rotated = await cli.run("token", "--rotate")
    assert rotated.code == 0 and "no longer works" in rotated.err
    new = load_config(cli.paths).workspaces["default"].token
    assert_same_secret(rotated.out, new + "\n", "the rotated token")
    assert new != old
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the daemon reloads secrets.json on change
            async with http.get(served.url + "/v1/models", headers={"Authorization": f"Bearer {old}"}) as response:
                if response.status == 401:
                    break
            await asyncio.sleep(0.1)
        assert response.status == 401
        async with http.get(served.url + "/v1/models", headers={"Authorization": f"Bearer {new}"}) as response:
            assert response.status == 200
    ghost = await cli.inproc("token", "--rotate", "ghost")
    assert ghost.code == 1 and "no workspace named 'ghost'" in ghost.err and ghost.out == ""


async def test_jobs_remove(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    # Without a daemon: from jobs.json.
    assert (await cli.inproc("jobs", "add", "ft_mistyped")).code == 0
    removed = await cli.inproc("jobs", "remove", "ft_mistyped")
    assert removed.code == 0 and "no longer watching ft_mistyped" in removed.out
    assert "ft_mistyped" not in (await cli.inproc("jobs", "--json")).out
    again = await cli.inproc("jobs", "remove", "ft_mistyped")
    assert again.code == 1 and "no tracked fine-tune job 'ft_mistyped'" in again.err
    # With a daemon: through it (it owns jobs.json while it runs).
    cli.env["LLMTUNE_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    assert (await cli.run("jobs", "add", "ft_other")).code == 0
    assert "ft_other" in (await cli.run("jobs")).out
    assert (await cli.run("jobs", "remove", "ft_other")).code == 0
    assert "ft_other" not in (await cli.run("jobs")).out
    assert (await cli.run("jobs", "remove", "ft_other")).code == 1
    await served.stop()
    assert "ft_other" not in cli.paths.root.joinpath("jobs.json").read_text()


async def test_reset_asks_or_takes_yes(cli: CLI, servers: list[Served], tmp_path: Path) -> None:
    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY)).code == 0
    (cli.paths.cache_dir / "models-x.json").write_text("{}")
    old_token = load_config(cli.paths).workspaces["default"].token
    unconfirmed = await cli.inproc("reset")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err and cli.paths.secrets_file.exists()
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    running = await cli.inproc("reset", "--yes")
    assert running.code == 1 and "llmtune-companion stop" in running.err
    await served.stop()
    done = await cli.run("reset", "--yes")
    assert done.code == 0 and "secrets.json" in done.out
    assert not cli.paths.secrets_file.exists() and not cli.paths.cache_dir.exists()
    assert cli.paths.config_file.exists() and cli.paths.log_file.exists()  # settings and log stay
    config = load_config(cli.paths)
    assert not config.workspaces["default"].has_key and config.workspaces["default"].token != old_token
    assert (await cli.inproc("reset", "--yes", "--all")).code == 0 and not cli.paths.root.exists()
    cli.assert_no_secret_printed()


def test_every_option_and_positional_has_a_description() -> None:
    """--help explains every argument of every command (argparse's own -h aside)."""
    import argparse

    def walk(parser: argparse.ArgumentParser, name: str) -> list[str]:
        gaps = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions}
                for sub, subparser in action.choices.items():
                    assert sub in listed, f"`{name} --help` does not list {sub!r}"
                    gaps += walk(subparser, f"{name} {sub}")
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction) and not action.help:
                gaps.append(f"{name} {action.dest}")
        return gaps

    assert walk(build_parser(), "llmtune-companion") == []
