"""`status` asks every backend now; `models --refresh` says when a backend did not answer."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import WORKSPACE_KEY, StandIn, closed_port
from tests.daemon.cli import test_main as test_cli
from tests.daemon.cli.test_main import CLI, Served

cli = test_cli.cli
servers = test_cli.servers


async def test_status_probes_backends_and_names_the_log(
    cli: CLI, standin: StandIn, servers: list[Served], tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{closed_port()}/v1"
    cli.env.update(LLMTUNE_BASE_URL=standin.url, LLMTUNE_LOCAL_URL=down)
    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY)).code == 0
    for running in (False, True):
        if running:
            servers.append(await cli.serve("--port", "0", log=tmp_path / "serve.log"))
        result = await cli.inproc("status")
        assert result.code == (0 if running else 3), result.err
        assert f"log:       {cli.paths.log_file}" in result.out
        local = next(line for line in result.out.splitlines() if line.startswith("backend:   local"))
        assert "UNREACHABLE" in local and down in local, local
        hosted = next(line for line in result.out.splitlines() if line.startswith("backend:   llmtune"))
        assert "reachable" in hosted and " ms, " in hosted and "models" in hosted, hosted
        report = orjson.loads((await cli.inproc("status", "--json")).out)
        probes = {row["name"]: row for row in report["probes"]}
        assert probes["local"]["reachable"] is False and probes["llmtune"]["reachable"] is True
        assert report["log"] == str(cli.paths.log_file)
        quick = orjson.loads((await cli.inproc("status", "--json", "--no-probe")).out)
        assert "probes" not in quick

        refreshed = await cli.inproc("models", "--refresh")
        assert refreshed.code == 0 and "echo" in refreshed.out
        assert f"warning: backend 'local' ({down}) cannot be reached" in refreshed.err
    cli.assert_no_secret_printed()
