"""Retries, fallback and upstream timeouts (daemon/forwarding.py), end to end on loopback.

The daemon is real, the hosted API is the stand-in scripted to fail; every test counts the calls
the stand-in saw, so a retry too many (or too few) fails the test.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from llmtune_companion.adapters import BackendRequest
from llmtune_companion.upstream.forwarding import retry_after_seconds, with_model
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Daemon, StandIn, StartDaemon, closed_port

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
CHAT = "/v1/chat/completions"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello fallback world"}]
WAIT = 5.0
# Quick retries, so the suite stays fast; retry_max_wait keeps its meaning (long waits go to the client).
FAST = "[upstream]\nbackoff_base = 0.01\nmax_retries = 2\nretry_max_wait = 2.0\n"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    return f"http://127.0.0.1:{closed_port()}"


async def chat(
    http: aiohttp.ClientSession, daemon: Daemon, model: str = HOSTED, **extra: Any
) -> tuple[int, dict[str, str], Any]:
    body = orjson.dumps({"model": model, "messages": HELLO, **extra})
    headers = {"Content-Type": "application/json", **daemon.auth()}
    async with http.post(daemon.url + CHAT, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


def calls(standin: StandIn) -> int:
    return standin.api.calls_by_path[CHAT]


def assert_our_error(payload: Any, code: str) -> None:
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "code", "details"}
    assert payload["error"]["code"] == code, payload
    assert payload["error"]["message"]


# -- retries --------------------------------------------------------------------------------------


async def test_429_with_long_retry_after_is_passed_at_once(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(429, retry_after=30)
    started = time.perf_counter()
    status, headers, payload = await chat(http, daemon)
    assert time.perf_counter() - started < 1.0  # not waited out
    assert status == 429
    assert headers["Retry-After"] == "30"
    assert headers["X-Companion-Backend"] == "llmtune"
    assert payload["error"]["code"] == "RATE_LIMITED" and payload["error"]["details"] == {"retry_after": 30}
    assert calls(standin) == 1
    standin.api.fail_next(429, retry_after=30)
    async with daemon.openai() as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=HOSTED, messages=HELLO)
    assert limited.value.response.headers["Retry-After"] == "30"
    assert calls(standin) == 2


async def test_429_without_retry_after_is_passed_at_once(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(429)
    status, headers, _ = await chat(http, daemon)
    assert status == 429 and "Retry-After" not in headers
    assert calls(standin) == 1


async def test_429_with_short_retry_after_is_retried(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(429, retry_after=0.1)
    started = time.perf_counter()
    status, headers, payload = await chat(http, daemon)
    assert time.perf_counter() - started >= 0.1  # Retry-After was honoured
    assert status == 200
    assert payload["choices"][0]["message"]["content"] == "Echo: hello fallback world"
    assert "Retry-After" not in headers
    assert calls(standin) == 2


async def test_5xx_is_retried_then_succeeds(standin: StandIn, start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(500)
    standin.api.fail_next(503)
    async with daemon.openai() as client:
        stream = await client.chat.completions.create(model=HOSTED, messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: hello fallback world"
    assert calls(standin) == 3


async def test_retries_exhausted_pass_the_last_status(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(500, times=2)
    last = {"error": {"message": "still down", "code": "DOWN", "details": {}}}
    standin.api.fail_next(502, body=last)
    status, headers, payload = await chat(http, daemon)
    assert status == 502 and payload == last
    assert headers["X-Companion-Backend"] == "llmtune"
    assert "X-Companion-Fallback-From" not in headers
    assert calls(standin) == 3  # the first try and max_retries = 2
    standin.api.fail_next(429, retry_after=0.05, times=3)
    status, headers, _ = await chat(http, daemon)
    assert status == 429 and headers["Retry-After"] == "0.05"
    assert calls(standin) == 6


async def test_4xx_other_than_429_is_not_retried(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    for status in (400, 401, 402, 404, 409):
        standin.api.fail_next(status)
        got, _, _ = await chat(http, daemon)
        assert got == status
    assert calls(standin) == 5


async def test_no_retries_when_max_retries_is_zero(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config="[upstream]\nmax_retries = 0\n", env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(500)
    status, _, _ = await chat(http, daemon)
    assert status == 500 and calls(standin) == 1


# -- fallback -------------------------------------------------------------------------------------

FALLBACK = FAST + '[hosted]\nfallback = "echo"\n'


async def test_fallback_after_5xx_retries(standin: StandIn, start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(config=FALLBACK, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(500, times=3)
    async with daemon.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model=HOSTED, messages=HELLO)
    assert raw.headers["X-Companion-Fallback-From"] == "llmtune"
    assert raw.headers["X-Companion-Backend"] == "echo"
    reply = raw.parse()
    assert reply.choices[0].message.content == "hello fallback world"  # echo's answer
    assert reply.model == "echo"
    assert calls(standin) == 3
    # Healthy again: no fallback header.
    async with daemon.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model=HOSTED, messages=HELLO)
    assert "X-Companion-Fallback-From" not in raw.headers
    assert raw.headers["X-Companion-Backend"] == "llmtune"


async def test_fallback_on_402_without_retry(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FALLBACK, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(402)
    status, headers, payload = await chat(http, daemon, stream=False)
    assert status == 200
    assert headers["X-Companion-Fallback-From"] == "llmtune" and headers["X-Companion-Backend"] == "echo"
    assert payload["choices"][0]["message"]["content"] == "hello fallback world"
    assert calls(standin) == 1


async def test_no_fallback_on_client_errors(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FALLBACK, env={"LLMTUNE_BASE_URL": standin.url})
    for status in (400, 401, 404, 429):
        standin.api.fail_next(status)
        got, headers, _ = await chat(http, daemon)
        assert got == status and "X-Companion-Fallback-From" not in headers


async def test_fallback_streams_when_hosted_is_unreachable(
    start_daemon: StartDaemon, closed_port_url: str
) -> None:
    daemon = await start_daemon(config=FALLBACK, env={"LLMTUNE_BASE_URL": closed_port_url})
    async with daemon.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model=HOSTED, messages=HELLO, stream=True)
        assert raw.headers["X-Companion-Fallback-From"] == "llmtune"
        assert raw.headers["X-Companion-Backend"] == "echo"
        stream = raw.parse()
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "hello fallback world"


async def test_route_fallback(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    config = FAST + '[[routes]]\nmatch = "team-*"\nbackend = "llmtune"\nmodel = "' + HOSTED + '"\nfallback = "echo"\n'
    daemon = await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(503, times=3)
    status, headers, payload = await chat(http, daemon, model="team-coder")
    assert status == 200 and headers["X-Companion-Fallback-From"] == "llmtune"
    assert payload["model"] == "echo"
    assert calls(standin) == 3
    # A model outside the route has no fallback.
    standin.api.fail_next(503, times=3)
    status, headers, _ = await chat(http, daemon)
    assert status == 503 and "X-Companion-Fallback-From" not in headers


async def test_unreachable_without_fallback_is_502(
    start_daemon: StartDaemon, closed_port_url: str, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": closed_port_url})
    status, _, payload = await asyncio.wait_for(chat(http, daemon), WAIT)
    assert status == 502
    assert_our_error(payload, "upstream_unreachable")
    assert payload["error"]["type"] == "upstream_error"
    assert payload["error"]["details"] == {"backend": "llmtune"}
    async with daemon.openai() as client:
        with pytest.raises(openai.InternalServerError) as down:
            await client.chat.completions.create(model=HOSTED, messages=HELLO)
    assert down.value.status_code == 502


async def test_missing_key_is_401_even_with_a_fallback(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    # The fallback stands in for an upstream that fails, not for a workspace that is not set up.
    daemon = await start_daemon(config=FALLBACK, env={"LLMTUNE_BASE_URL": standin.url}, key=None)
    status, headers, payload = await chat(http, daemon)
    assert status == 401 and "X-Companion-Fallback-From" not in headers
    assert_our_error(payload, "missing_api_key")
    assert not standin.api.requests


# -- timeouts -------------------------------------------------------------------------------------


async def test_first_byte_timeout_is_504(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(
        config="[upstream]\nfirst_byte_timeout = 0.3\nmax_retries = 0\n", env={"LLMTUNE_BASE_URL": standin.url}
    )
    standin.api.first_byte_delay = 2.0
    started = time.perf_counter()
    status, _, payload = await asyncio.wait_for(chat(http, daemon, stream=True), WAIT)
    elapsed = time.perf_counter() - started
    assert status == 504
    assert_our_error(payload, "upstream_timeout")
    assert payload["error"]["type"] == "upstream_timeout"
    assert 0.25 < elapsed < 1.5, elapsed
    async with daemon.openai() as client:
        with pytest.raises(openai.InternalServerError) as late:
            await client.chat.completions.create(model=HOSTED, messages=HELLO)
    assert late.value.status_code == 504


async def test_first_byte_timeout_falls_back(standin: StandIn, start_daemon: StartDaemon) -> None:
    config = '[upstream]\nfirst_byte_timeout = 0.3\n[hosted]\nfallback = "echo"\n'
    daemon = await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.first_byte_delay = 2.0
    async with daemon.openai() as client:
        raw = await asyncio.wait_for(
            client.chat.completions.with_raw_response.create(model=HOSTED, messages=HELLO), WAIT
        )
    assert raw.headers["X-Companion-Fallback-From"] == "llmtune"
    assert raw.parse().choices[0].message.content == "hello fallback world"


# -- the pure parts -------------------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("30") == 30.0
    assert retry_after_seconds("0.1") == pytest.approx(0.1)
    assert retry_after_seconds("-5") == 0.0
    assert retry_after_seconds("soon") is None
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < (retry_after_seconds(future) or 0) <= 60
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert retry_after_seconds(past) == 0.0


def test_with_model_rewrites_only_the_model() -> None:
    body = b'{ "model" : "alias-x", "messages": [], "metadata": {"b": 1, "a": [1.5, null]} }'
    request = BackendRequest("chat", body, False, None, {}, orjson.loads(body))
    same = with_model(request, "alias-x")
    assert same is request  # no rewrite: the bytes stay exactly as sent
    moved = with_model(request, "real-model")
    assert orjson.loads(moved.body) == {"model": "real-model", "messages": [], "metadata": {"b": 1, "a": [1.5, None]}}
    assert moved.payload is not None and moved.payload["model"] == "real-model"
    assert request.payload is not None and request.payload["model"] == "alias-x"  # the original is untouched


# -- no retry multiplication (issue 8) -----------------------------------------------------------


async def test_after_our_retries_the_sdk_does_not_retry_again(standin: StandIn, start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(config=FAST, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(500, times=50)
    client = daemon.openai(max_retries=2)  # the SDK's own default, as Continue runs it
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model=HOSTED, messages=HELLO)
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert calls(standin) == 3, "the SDK's retries multiplied ours"


async def test_no_should_retry_header_when_we_did_not_retry(standin: StandIn, start_daemon: StartDaemon,
                                                           http: aiohttp.ClientSession) -> None:
    daemon = await start_daemon(config="[upstream]\nmax_retries = 0\n", env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(500)
    async with http.post(daemon.base_url + "/chat/completions", headers=daemon.auth(),
                         json={"model": HOSTED, "messages": HELLO}) as response:
        assert response.status == 500
        assert "x-should-retry" not in response.headers


@pytest.mark.parametrize("path", ["/api/v1/llm/completions", "/v1/chat/completions"])
async def test_the_routing_api_and_gate_mode_say_it_too(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Any, path: str
) -> None:
    config = FAST + f'[workspaces.default]\nroot = "{tmp_path}"\ntools = "gate"\n'
    daemon = await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url})
    standin.api.fail_next(503, times=3)
    async with http.post(daemon.url + path, headers=daemon.auth(),
                         json={"model": HOSTED, "messages": HELLO}) as response:
        assert response.status == 503
        assert response.headers["x-should-retry"] == "false"


async def read_events(response: aiohttp.ClientResponse, wanted: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while len(events) < wanted:
            line = await response.content.readline()
            if line.startswith(b"data: "):
                event = orjson.loads(line[6:])
                if event["type"].startswith("hosted."):
                    events.append(event)
    return events


async def test_fallback_and_recovery_are_published_on_the_event_stream(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    daemon = await start_daemon(config=FALLBACK, env={"LLMTUNE_BASE_URL": standin.url})
    async with http.get(daemon.url + "/companion/v1/events", headers=daemon.auth(daemon.control_token)) as events:
        assert await events.content.readline() == b": connected\n"
        standin.api.fail_next(500, times=3)
        client = daemon.openai()
        await client.chat.completions.create(model=HOSTED, messages=HELLO)  # falls back to echo
        await client.chat.completions.create(model=HOSTED, messages=HELLO)  # the hosted API answers again
        await client.chat.completions.create(model=HOSTED, messages=HELLO)  # healthy: no second event
        fallback, recovered = await read_events(events, 2)
    assert fallback["type"] == "hosted.fallback"
    assert {k: fallback[k] for k in ("backend", "fallback", "error")} == {
        "backend": "llmtune", "fallback": "echo", "error": "upstream_error"}
    assert recovered["type"] == "hosted.recovered" and recovered["backend"] == "llmtune"
    assert isinstance(fallback["time"], float)
