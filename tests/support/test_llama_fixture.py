"""The real llama.cpp server fixture answers like an OpenAI endpoint.

The tiny model's text is random: assert shapes, finish reasons and token counts, never words.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.llama_server import LlamaServerError, LlamaServerProcess
from tests.support.tiny_model import write_tiny_model

MAX_TOKENS = 16
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a tiny test model."},
    {"role": "user", "content": "Say something, anything."},
]


@pytest.fixture
def client(llama_server: LlamaServerProcess) -> Iterator[openai.OpenAI]:
    # No retries: a failure should surface at once, not after backoff.
    with openai.OpenAI(base_url=llama_server.base_url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_is_deterministic_and_small(tmp_path: Path, tiny_model_path: Path) -> None:
    first = write_tiny_model(tmp_path / "a.gguf")
    second = write_tiny_model(tmp_path / "b.gguf")
    assert _sha256(first) == _sha256(second) == _sha256(tiny_model_path)
    assert 200_000 < first.stat().st_size < 300_000
    assert first.read_bytes()[:4] == b"GGUF"


def test_models_lists_alias(llama_server: LlamaServerProcess, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert llama_server.alias in ids
    assert llama_server.base_url == f"http://127.0.0.1:{llama_server.port}/v1"


def test_chat_completion_has_openai_shape(llama_server: LlamaServerProcess, client: openai.OpenAI) -> None:
    for seed in (1, 2, 3):  # several samples: the model must not stop at once on any of them
        resp = client.chat.completions.create(
            model=llama_server.alias, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=seed
        )
        assert resp.object == "chat.completion"
        assert resp.id
        assert resp.model == llama_server.alias
        assert len(resp.choices) == 1
        choice = resp.choices[0]
        assert choice.index == 0
        assert choice.message.role == "assistant"
        assert isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")
        usage = resp.usage
        assert usage is not None
        assert usage.prompt_tokens > 0
        assert 1 < usage.completion_tokens <= MAX_TOKENS  # not degenerate, and max_tokens is honoured
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_yields_content_deltas(llama_server: LlamaServerProcess, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=llama_server.alias,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,
    )
    chunks = list(stream)
    assert chunks
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert finishes[0] in ("stop", "length")


def test_chat_stream_include_usage(llama_server: LlamaServerProcess, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=llama_server.alias,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    last = chunks[-1]
    assert last is usage_chunks[0]
    assert last.choices == []  # OpenAI shape: the usage chunk carries no choices
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert 0 < last.usage.completion_tokens <= MAX_TOKENS


async def test_raw_chat_stream_ends_with_done(llama_server: LlamaServerProcess) -> None:
    body = {"model": llama_server.alias, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{llama_server.base_url}/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    contents = [p["choices"][0]["delta"].get("content") for p in payloads if p["choices"]]
    assert any(contents)


def test_text_completion(llama_server: LlamaServerProcess, client: openai.OpenAI) -> None:
    resp = client.completions.create(model=llama_server.alias, prompt="Once upon a time", max_tokens=8)
    assert resp.object == "text_completion"
    assert len(resp.choices) == 1
    assert isinstance(resp.choices[0].text, str)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 8


async def test_bad_json_is_openai_error(llama_server: LlamaServerProcess) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{llama_server.base_url}/chat/completions",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 400
        payload = await resp.json(content_type=None)
    error = payload["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == 400


def test_process_lifecycle(tiny_model_path: Path, tmp_path: Path) -> None:
    # A second, short-lived server: start, serve, stop cleanly, and free its port.
    server = LlamaServerProcess(tiny_model_path, alias="other-tiny", workdir=tmp_path)
    with server:
        assert server.running
        assert server.pid > 0
        assert server.startup_seconds is not None and server.startup_seconds < 60
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/v1/models")
        models = json.loads(conn.getresponse().read())
        conn.close()
        assert [m["id"] for m in models["data"]] == ["other-tiny"]
    assert not server.running
    assert server.returncode == 0  # SIGTERM handled, not killed
    assert "llama_server: stopped" in server.read_log()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=2).request("GET", "/v1/models")


def test_start_failure_reports_child_log(tmp_path: Path, llama_server: LlamaServerProcess) -> None:
    # Port already taken by the session server: the child exits and its log explains why.
    server = LlamaServerProcess(llama_server.model_path, port=llama_server.port, workdir=tmp_path)
    with pytest.raises(LlamaServerError, match="exited during startup") as info:
        server.start()
    assert "couldn't bind" in str(info.value) or "failed to start" in str(info.value)
    assert not server.running
    assert llama_server.running
