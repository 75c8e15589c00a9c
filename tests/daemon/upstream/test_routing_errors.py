"""Routing mistakes a newcomer makes get an answer that names what happened and what to do next."""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import orjson
import pytest
from llmtune_companion.config.workspaces import add_workspace

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon, closed_port

HELLO = [{"role": "user", "content": "hi"}]


async def chat(daemon: Daemon, model: str, token: str | None = None, path: str = "/v1/chat/completions"
               ) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(
        daemon.url + path, json={"model": model, "messages": HELLO}, headers=daemon.auth(token)
    ) as response:
        return response.status, orjson.loads(await response.read())


def error_of(payload: dict[str, Any], code: str) -> dict[str, Any]:
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "code", "details"}, payload
    assert payload["error"]["code"] == code, payload
    return dict(payload["error"])


async def test_a_prefix_naming_an_unconfigured_local_backend(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    status, payload = await chat(daemon, "local/qwen2.5-coder")
    assert status == 404
    error = error_of(payload, "backend_not_found")
    assert "names the backend 'local', which is not configured" in error["message"]
    assert "LLMTUNE_LOCAL_URL=" in error["message"] and "[backends.local]" in error["message"]
    assert "echo" in error["message"] and error["details"] == {"backend": "local"}
    status, payload = await chat(daemon, "ollama/llama3")
    assert status == 404 and "add [backends.ollama] to config.toml" in error_of(payload, "backend_not_found")["message"]
    assert standin.api.calls_by_path.get("/v1/chat/completions", 0) == 0  # nothing went to the hosted API


async def test_a_typo_sent_to_the_hosted_api(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    status, payload = await chat(daemon, "ehco")
    assert status == 404
    error = error_of(payload, "model_not_found")
    assert "the hosted LLMTune API answered 404 (Model 'ehco' not found)" in error["message"]
    assert "'ehco' is not served by a configured backend or route" in error["message"]
    assert "did you mean 'echo'?" in error["message"]
    assert error["details"]["upstream_status"] == 404 and error["details"]["backend"] == "llmtune"
    # Unreachable hosted API: still the reason and the likely meant id, not only the socket error.
    unreachable = await start_daemon(env={"LLMTUNE_BASE_URL": f"http://127.0.0.1:{closed_port()}"},
                                     config="[upstream]\nmax_retries = 0\n")
    status, payload = await chat(unreachable, "ehco")
    assert status == 502
    assert "did you mean 'echo'?" in error_of(payload, "upstream_unreachable")["message"]


async def test_missing_key_hint_fits_the_workspace(start_daemon: StartDaemon, standin: StandIn) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url}, key=None)
    add_workspace(daemon.paths, "team", None)
    daemon.runtime.reload()
    team_token = daemon.runtime.config.workspaces["team"].token
    status, payload = await chat(daemon, "meta-llama/Llama-3.3-70B-Instruct", team_token)
    message = error_of(payload, "missing_api_key")["message"]
    assert status == 401 and "workspace add team --key-stdin" in message and "LLMTUNE_API_KEY" not in message
    status, payload = await chat(daemon, "meta-llama/Llama-3.3-70B-Instruct")
    message = error_of(payload, "missing_api_key")["message"]
    assert "workspace add default --key-stdin" in message and "LLMTUNE_API_KEY" in message
    status, payload = await chat(daemon, "ehco", team_token)
    assert "did you mean 'echo'?" in error_of(payload, "missing_api_key")["message"]


async def test_openai_paths_without_v1_say_so(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon()
    status, payload = await chat(daemon, "echo", path="/chat/completions")
    assert status == 404
    message = error_of(payload, "not_found")["message"]
    assert "under /v1" in message and "POST /v1/chat/completions" in message
    status, payload = await chat(daemon, "echo", path="/nowhere")
    assert status == 404 and "/companion/v1" in error_of(payload, "not_found")["message"]


async def test_a_missing_boto3_is_one_clear_answer_and_shows_in_status(
    start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if not installed: import fails, find_spec is None
    daemon = await start_daemon(config='[backends.aws]\ntype = "bedrock"\nregion = "us-east-1"\n'
                                       'models = ["anthropic.claude-3-haiku"]\n')
    status, payload = await chat(daemon, "aws/anthropic.claude-3-haiku")
    assert status == 501
    message = error_of(payload, "bedrock_unavailable")["message"]
    assert "pip install boto3" in message and "llmtune-companion[bedrock]" not in message
    async with aiohttp.ClientSession() as http, http.get(
        daemon.url + "/companion/v1/status?probe=1", headers=daemon.auth(daemon.control_token)
    ) as response:
        report = orjson.loads(await response.read())
    probes = {row["name"]: row for row in report["probes"]}
    assert "boto3 is not installed" in probes["aws"]["error"] and probes["aws"]["reachable"] is False
    assert probes["echo"]["reachable"] is True and probes["echo"]["models"] == 1


async def test_status_probe_reports_reachability_latency_and_errors(
    start_daemon: StartDaemon, standin: StandIn
) -> None:
    down = f"http://127.0.0.1:{closed_port()}/v1"
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url, "LLMTUNE_LOCAL_URL": down})
    assert WORKSPACE_KEY  # the default workspace has the key the stand-in accepts
    async with aiohttp.ClientSession() as http, http.get(
        daemon.url + "/companion/v1/status?probe=1", headers=daemon.auth(daemon.control_token)
    ) as response:
        probes = {row["name"]: row for row in orjson.loads(await response.read())["probes"]}
    hosted, local = probes["llmtune"], probes["local"]
    assert hosted["reachable"] is True and hosted["error"] is None and hosted["models"] >= 1
    assert isinstance(hosted["latency_ms"], float)
    assert local["reachable"] is False and local["url"] == down and local["error"]
    # A probe does not fill the model cache: clients' lists are what they were.
    assert daemon.runtime.model_cache.status() == []
