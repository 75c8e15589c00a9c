"""Fine-tune job tracking (daemon/jobs.py): polling, events on the control stream, the webhook, the CLI."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from llmtune_companion import cli
from llmtune_companion.appkeys import JOBS
from llmtune_companion.cli import client as cli_client
from llmtune_companion.cli import jobs as cli_jobs
from llmtune_companion.config.settings import ENV_BASE_URL
from llmtune_companion.upstream.jobs import JobTracker, jobs_file, load_jobs, webhook_body

from tests.conftest import WORKSPACE_KEY, Daemon, StandIn, StartDaemon
from tests.daemon.api.test_control import read_event

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
FINE_TUNE = {"base_model": HOSTED, "dataset": "s3://bucket/train.jsonl"}
TIMEOUT = 10.0


@pytest.fixture
async def webhook(aiohttp_server: Any) -> tuple[TestServer, asyncio.Queue[dict[str, Any]]]:
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    return await aiohttp_server(app), received


def jobs_config(webhook_url: str | None = None) -> str:
    config = "[jobs]\npoll_interval = 0.05\nmax_poll_interval = 0.2\n"
    if webhook_url:
        config += f'webhook_url = "{webhook_url}"\n'
    return config


@pytest.fixture
async def daemon(start_daemon: StartDaemon, standin: StandIn,
                 webhook: tuple[TestServer, asyncio.Queue[dict[str, Any]]]) -> Daemon:
    return await start_daemon(config=jobs_config(str(webhook[0].make_url("/hook"))),
                              env={ENV_BASE_URL: standin.url})


@pytest.fixture
async def control(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth(daemon.control_token)) as session:
        yield session


async def create_job(daemon: Daemon) -> dict[str, Any]:
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as http:
        async with http.post("/v1/fine-tune", json=FINE_TUNE) as response:
            assert response.status == 200
            job: dict[str, Any] = await response.json()
    return job


async def next_job_event(content: aiohttp.StreamReader) -> tuple[str, dict[str, Any]]:
    while True:
        kind, event = await read_event(content)
        if kind.startswith(("training.", "model.")):
            return kind, event


async def test_job_lifecycle_events_webhook_and_models(
    daemon: Daemon, control: aiohttp.ClientSession, standin: StandIn,
    webhook: tuple[TestServer, asyncio.Queue[dict[str, Any]]],
) -> None:
    received = webhook[1]
    async with control.get("/companion/v1/events") as stream:
        assert stream.status == 200
        job = await create_job(daemon)
        job_id = job["id"]
        standin.api.advance_job(job_id, "running")
        kind, event = await next_job_event(stream.content)
        assert kind == event["type"] == "training.started"
        assert (event["job_id"], event["workspace"], event["status"]) == (job_id, "default", "running")
        assert event["previous_status"] == "queued"

        standin.api.advance_job(job_id, "completed")
        kind, event = await next_job_event(stream.content)
        assert kind == "training.completed" and event["model"] == f"workspace/{job_id}"

        model = standin.api.deploy_job(job_id)
        kind, event = await next_job_event(stream.content)
        assert kind == "model.deployed" and (event["model"], event["job_id"]) == (model, job_id)

    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as http:
        async with http.get("/v1/models") as response:
            ids = [m["id"] for m in (await response.json())["data"]]
    assert model in ids

    hooks = [await asyncio.wait_for(received.get(), TIMEOUT) for _ in range(3)]
    assert [h["event"] for h in hooks] == ["training.started", "training.completed", "model.deployed"]
    assert hooks[2]["data"] == {"job_id": job_id, "workspace": "default", "model": model}
    assert all(h["timestamp"].endswith("Z") for h in hooks)
    assert WORKSPACE_KEY not in str(hooks)

    async with control.get("/companion/v1/jobs") as response:
        [tracked] = (await response.json())["jobs"]
    assert (tracked["id"], tracked["status"], tracked["deployed"], tracked["watching"]) == (
        job_id, "completed", True, False)
    # Polls went to the hosted API with the workspace key.
    polls = [r for r in standin.api.requests if r.path == f"/v1/fine-tune/{job_id}"]
    assert polls and all(r.headers["Authorization"] == f"Bearer {WORKSPACE_KEY}" for r in polls)


async def test_a_failed_job(daemon: Daemon, control: aiohttp.ClientSession, standin: StandIn) -> None:
    async with control.get("/companion/v1/events") as stream:
        job = await create_job(daemon)
        standin.api.advance_job(job["id"], "failed", error={"message": "OOM", "code": "OUT_OF_MEMORY"})
        kind, event = await next_job_event(stream.content)
    assert kind == "training.failed" and event["error"] == {"message": "OOM", "code": "OUT_OF_MEMORY"}
    tracker = daemon.app[JOBS]
    assert not tracker.jobs[job["id"]].watching


async def test_track_a_job_by_id_and_persist(daemon: Daemon, control: aiohttp.ClientSession,
                                             standin: StandIn) -> None:
    # A job created elsewhere (straight on the hosted API), then named to the companion.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {WORKSPACE_KEY}"}) as direct:
        async with direct.post(standin.url + "/v1/fine-tune", json=FINE_TUNE) as response:
            job_id = (await response.json())["id"]
    standin.api.advance_job(job_id, "running")
    async with control.get("/companion/v1/events") as stream:
        async with control.post("/companion/v1/jobs", json={"id": job_id}) as response:
            assert response.status == 201
            assert (await response.json())["job"]["id"] == job_id
        kind, event = await next_job_event(stream.content)
    assert kind == "training.started" and event["previous_status"] == "unknown"

    saved = load_jobs(jobs_file(daemon.paths))
    assert saved[job_id].status == "running" and saved[job_id].workspace == "default"
    assert stat.S_IMODE(jobs_file(daemon.paths).stat().st_mode) == 0o600

    for body, status in (({"id": "x", "workspace": "nope"}, 404), ({"id": "a/b"}, 400), ({}, 400)):
        async with control.post("/companion/v1/jobs", json=body) as response:
            assert response.status == status, body
    async with aiohttp.ClientSession(daemon.url, headers=daemon.auth()) as http:
        async with http.get("/companion/v1/jobs") as response:
            assert response.status == 401  # a workspace token does not open the control API


async def test_polling_backs_off_while_nothing_changes(daemon: Daemon, standin: StandIn) -> None:
    job = await create_job(daemon)
    tracker: JobTracker = daemon.app[JOBS]
    async with asyncio.timeout(TIMEOUT):
        while tracker._interval.get(job["id"]) != 0.2:
            await asyncio.sleep(0.05)
    polls = standin.api.calls_by_path[f"/v1/fine-tune/{job['id']}"]
    assert 2 <= polls <= 6  # 0.05 -> 0.1 -> 0.2, not a poll every 50 ms
    standin.api.advance_job(job["id"], "running")
    async with asyncio.timeout(TIMEOUT):  # a change resets the wait to the first interval
        while tracker.jobs[job["id"]].status != "running" or tracker._interval[job["id"]] != 0.05:
            await asyncio.sleep(0.02)


def test_webhook_body_shape() -> None:
    body = orjson.loads(webhook_body({"type": "model.deployed", "time": 0.0, "model": "m", "job_id": "j"}))
    assert body == {"event": "model.deployed", "data": {"model": "m", "job_id": "j"},
                    "timestamp": "1970-01-01T00:00:00Z"}


async def test_cli_lists_and_adds_through_the_daemon(daemon: Daemon, standin: StandIn,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    job = await create_job(daemon)
    # The test server is not in daemon.json: point the command (and its control-token lookup) at it.
    monkeypatch.setattr(cli_jobs, "daemon_url", lambda paths: daemon.url)
    monkeypatch.setattr(cli_client, "daemon_url", lambda paths: daemon.url)
    assert await asyncio.to_thread(cli.main, ["jobs", "--json"]) == 0
    [listed] = orjson.loads(capsys.readouterr().out)
    assert listed["id"] == job["id"]
    assert await asyncio.to_thread(cli.main, ["jobs", "add", "ft_elsewhere_1"]) == 0
    assert "tracking ft_elsewhere_1  default" in capsys.readouterr().out
    assert "ft_elsewhere_1" in daemon.app[JOBS].jobs


def test_cli_without_a_daemon(home: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["jobs"]) == 0
    assert "no fine-tune jobs tracked" in capsys.readouterr().out
    assert cli.main(["jobs", "add", "ft_1"]) == 0
    assert cli.main(["jobs", "add", "ft_2", "--workspace", "nope"]) == 1
    capsys.readouterr()
    assert cli.main(["jobs", "--json"]) == 0
    [job] = orjson.loads(capsys.readouterr().out)
    assert (job["id"], job["workspace"], job["status"], job["watching"]) == ("ft_1", "default", "unknown", True)
    assert set(load_jobs(jobs_file(home))) == {"ft_1"}
