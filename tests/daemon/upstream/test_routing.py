"""routing.py: which backend serves a model id, unit-level and through the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from llmtune_companion.config.settings import Settings
from llmtune_companion.upstream.routing import Route, Router

from tests.conftest import WORKSPACE_KEY, StandIn, StartDaemon

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
SMALL = "meta-llama/Llama-3.1-8B-Instruct"
BACKENDS = ("llmtune", "echo", "local", "gpu")


def router(**settings: Any) -> Router:
    return Router(Settings.model_validate({"backends": {"local": {"type": "echo"}, "gpu": {"type": "echo"}},
                                           **settings}), BACKENDS)


def test_echo_is_built_in() -> None:
    assert router().resolve("echo") == Route("echo", "echo")
    # Even a catch-all route does not take it.
    assert router(routes=[{"match": "*", "backend": "gpu"}]).resolve("echo").backend == "echo"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("local/x", Route("local", "x", prefixed=True)),
        ("local/qwen2.5:7b", Route("local", "qwen2.5:7b", prefixed=True)),
        ("gpu/org/model-v2", Route("gpu", "org/model-v2", prefixed=True)),  # only the first slash splits
        ("echo/anything", Route("echo", "anything", prefixed=True)),
    ],
)
def test_backend_prefix(model: str, expected: Route) -> None:
    assert router().resolve(model) == expected


def test_prefix_beats_routes() -> None:
    r = router(routes=[{"match": "*", "backend": "gpu", "model": "m"}])
    assert r.resolve("local/x") == Route("local", "x", prefixed=True)


@pytest.mark.parametrize(
    "model",
    [HOSTED, "Qwen/Qwen2.5-Coder-32B-Instruct", "workspace/model-v1", "gpt-4o", "local", "local/", "/x",
     "unknown/x", "llmtune/x", "Local/x"],
)
def test_everything_else_goes_hosted_unchanged(model: str) -> None:
    assert router().resolve(model) == Route("llmtune", model)


def test_hosted_fallback_applies_to_hosted_models_only() -> None:
    r = router(hosted={"fallback": "local/small"})
    assert r.resolve(HOSTED) == Route("llmtune", HOSTED, "local/small")
    assert r.resolve("local/x").fallback is None
    assert r.resolve("echo").fallback is None


def test_routes_first_match_wins_with_rename_and_fallback() -> None:
    r = router(
        hosted={"fallback": "echo"},
        routes=[
            {"match": "gpt-4*", "backend": "gpu", "model": "qwen-32b", "fallback": "llmtune-big"},
            {"match": "gpt-*", "backend": "local"},
            {"match": "claude-?-*", "backend": "llmtune", "model": HOSTED},
            {"match": "big", "backend": "llmtune", "model": HOSTED, "fallback": "local/x"},
            {"match": "meta-llama/*-8B-*", "backend": "local", "model": "llama8b"},
        ],
    )
    assert r.resolve("gpt-4o") == Route("gpu", "qwen-32b", "llmtune-big")
    assert r.resolve("gpt-4") == Route("gpu", "qwen-32b", "llmtune-big")
    assert r.resolve("gpt-3.5-turbo") == Route("local", "gpt-3.5-turbo")  # no rename: the id as sent
    # A route to the hosted backend takes hosted.fallback unless it has its own.
    assert r.resolve("claude-3-opus") == Route("llmtune", HOSTED, "echo")
    assert r.resolve("big") == Route("llmtune", HOSTED, "local/x")
    # Globs see the whole id, slashes included.
    assert r.resolve(SMALL) == Route("local", "llama8b")
    assert r.resolve(HOSTED) == Route("llmtune", HOSTED, "echo")
    # Routed models are not "prefixed": the client did not name the backend.
    assert not r.resolve("gpt-4o").prefixed


def test_globs_are_case_sensitive_and_whole_id() -> None:
    r = router(routes=[{"match": "gpt-*", "backend": "gpu"}])
    assert r.resolve("GPT-4").backend == "llmtune"
    assert r.resolve("my-gpt-4").backend == "llmtune"
    assert r.resolve("gpt-4").backend == "gpu"


def test_public_id() -> None:
    r = router()
    assert r.public_id("llmtune", HOSTED) == HOSTED
    assert r.public_id("echo", "echo") == "echo"
    assert r.public_id("local", "x") == "local/x"
    assert r.public_id("gpu", "org/model") == "gpu/org/model"
    # What a backend lists resolves back to that backend and that id.
    for backend, model in (("local", "x"), ("gpu", "org/model"), ("llmtune", HOSTED), ("echo", "echo")):
        route = r.resolve(r.public_id(backend, model))
        assert (route.backend, route.model) == (backend, model)


# -- through the daemon --------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "route me"}]}


async def test_daemon_routes_to_each_backend(
    standin: StandIn, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    # "local" is an OpenAI-compatible server (the stand-in's /v1, reached with its own key variable).
    config = f"""
[upstream]
max_retries = 0

[backends.local]
url = "{standin.url}/v1"
api_key_env = "COMPANION_TEST_LOCAL_KEY"
models = ["{SMALL}"]

[[routes]]
match = "gpt-4*"
backend = "llmtune"
model = "{SMALL}"
fallback = "echo"

[[routes]]
match = "fast"
backend = "local"
model = "{SMALL}"
"""
    daemon = await start_daemon(config=config, env={"LLMTUNE_BASE_URL": standin.url,
                                                    "COMPANION_TEST_LOCAL_KEY": WORKSPACE_KEY})
    api = standin.api

    async def send(model: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        async with http.post(daemon.url + "/v1/chat/completions", json=chat(model), headers=daemon.auth()) as r:
            return r.status, dict(r.headers), await r.json()

    status, headers, body = await send("echo")
    assert status == 200 and headers["X-Companion-Backend"] == "echo"
    assert body["choices"][0]["message"]["content"] == "route me"

    status, headers, _ = await send(HOSTED)  # a slash in a hosted id does not make it a prefix
    assert status == 200 and headers["X-Companion-Backend"] == "llmtune"
    assert api.requests[-1].path == "/v1/chat/completions" and api.requests[-1].json["model"] == HOSTED

    status, headers, _ = await send(f"local/{SMALL}")
    assert status == 200 and headers["X-Companion-Backend"] == "local"
    assert api.requests[-1].json["model"] == SMALL  # the prefix is removed

    status, headers, body = await send("local/not-served-there")
    assert status == 404 and body["error"]["code"] == "model_not_found"

    status, headers, _ = await send("gpt-4o")  # glob with rename
    assert status == 200 and headers["X-Companion-Backend"] == "llmtune"
    assert api.requests[-1].json["model"] == SMALL

    status, headers, _ = await send("fast")
    assert status == 200 and headers["X-Companion-Backend"] == "local"

    api.fail_next(503, path_prefix="/v1/chat")  # the route's fallback takes over
    status, headers, body = await send("gpt-4-turbo")
    assert status == 200 and headers["X-Companion-Backend"] == "echo"
    assert headers["X-Companion-Fallback-From"] == "llmtune"
    assert body["choices"][0]["message"]["content"] == "route me"

    # /v1/models lists each backend's models under the ids that route back to them.
    async with http.get(daemon.url + "/v1/models", headers=daemon.auth()) as response:
        listed = {m["id"]: m["owned_by"] for m in (await response.json())["data"]}
    assert listed["echo"] and HOSTED in listed and f"local/{SMALL}" in listed
    assert listed[f"local/{SMALL}"] == "local"
