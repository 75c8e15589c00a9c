"""The benchmark's fast upstream must answer like the hosted stand-in, or its figures measure something else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from llmtune_companion.config.settings import ENV_BASE_URL

from benchmarks import fast_upstream
from tests.conftest import WORKSPACE_KEY, StartDaemon

MODEL = "meta-llama/Llama-3.3-70B-Instruct"


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    state = fast_upstream.Server(WORKSPACE_KEY)
    server = await loop.create_server(lambda: fast_upstream.Connection(state), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for connection in list(state.connections):
        if connection.transport is not None:
            connection.transport.abort()
    await server.wait_closed()


async def test_the_sdk_through_the_daemon_reads_it_like_the_hosted_api(
    upstream_url: str, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon(env={ENV_BASE_URL: upstream_url})
    client = daemon.openai()
    assert MODEL in {model.id async for model in client.models.list()}

    answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.model == MODEL and answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content and answer.usage is not None

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"x_standin_chunks": 50},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 50
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_it_checks_the_key_and_the_body(upstream_url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(upstream_url + "/v1/chat/completions", json=body,
                             headers={"Authorization": "Bearer sk_wrong"}) as response:
            assert response.status == 401 and "error" in await response.json()
        auth = {"Authorization": f"Bearer {WORKSPACE_KEY}"}
        async with http.post(upstream_url + "/v1/chat/completions", data=b"{not json", headers=auth) as response:
            assert response.status == 400 and "error" in await response.json()
        async with http.get(upstream_url + "/nowhere", headers=auth) as response:
            assert response.status == 404
