"""The backend registry is the only thing a new backend touches (adapters/__init__.py).

A backend written here, in the test alone, is registered with one line and then configured in
config.toml, validated, built, listed and sent requests by the real daemon: nothing in daemon/
knows its name.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import openai
import orjson
import pytest
from llmtune_companion.adapters import (
    BACKEND_TYPES,
    Backend,
    BackendRequest,
    BackendResponse,
    BackendSettings,
    BytesResponse,
)
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import ConfigError, load_config

from tests.conftest import WORKSPACE_KEY, StartDaemon
from tests.daemon.test_logs import assert_same_secret


class ShoutSettings(BackendSettings):
    # Keys only this backend reads: config.toml accepts them under `type = "shout"` and nowhere else.
    greeting: str
    suffix: str = "!"


class ShoutBackend(Backend):
    """Answers a chat with its greeting and the user's words in capitals; records what it was sent."""

    kind = "shout"
    settings_model: ClassVar[type[BackendSettings]] = ShoutSettings
    seen: ClassVar[list[BackendRequest]] = []

    def __init__(self, *args: Any, greeting: str = "", suffix: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.greeting = greeting
        self.suffix = suffix

    @classmethod
    def from_settings(cls, name: str, context: Any, settings: BackendSettings) -> Backend:
        assert isinstance(settings, ShoutSettings)
        return cls(name, context, models=settings.models, greeting=settings.greeting, suffix=settings.suffix)

    async def handle(self, request: BackendRequest) -> BackendResponse:
        headers = {"Content-Type": "application/json"}
        if request.endpoint == "models":
            listing = [{"id": model, "object": "model", "owned_by": self.name} for model in self.static_models]
            return BytesResponse(200, orjson.dumps({"object": "list", "data": listing}), headers)
        type(self).seen.append(request)
        payload = request.payload or {}
        words = str(payload["messages"][-1]["content"]).upper()
        message = {"role": "assistant", "content": f"{self.greeting} {words}{self.suffix}"}
        body = {"id": "chatcmpl-shout", "object": "chat.completion", "created": int(time.time()),
                "model": payload.get("model"), "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        return BytesResponse(200, orjson.dumps(body), headers)


class KeyedShoutBackend(ShoutBackend):
    """The same, but it needs the workspace's LLMTune key like the hosted API (a flag, not a name check)."""

    kind = "keyed"
    injects_workspace_key: ClassVar[bool] = True


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry line a new backend adds, for this test only."""
    monkeypatch.setitem(BACKEND_TYPES, "shout", ShoutBackend)
    monkeypatch.setitem(BACKEND_TYPES, "keyed", KeyedShoutBackend)
    ShoutBackend.seen = []


CONFIG = """
[backends.loud]
type = "shout"
greeting = "HELLO"
suffix = "!!"
models = ["loud-1"]
"""


async def test_a_backend_defined_in_a_test_serves_requests_through_the_daemon(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(config=CONFIG)
    client = daemon.openai()
    answer = await client.chat.completions.with_raw_response.create(
        model="loud/loud-1", messages=[{"role": "user", "content": "quiet please"}])
    assert answer.headers["X-Companion-Backend"] == "loud"
    assert answer.parse().choices[0].message.content == "HELLO QUIET PLEASE!!"
    # The daemon routed by prefix and sent the backend its own model id.
    assert [request.payload["model"] for request in ShoutBackend.seen if request.payload] == ["loud-1"]
    listed = [model.id async for model in client.models.list()]
    assert "loud/loud-1" in listed
    described = {b["name"]: b for b in daemon.runtime.status()["backends"]}
    assert described["loud"]["type"] == "shout"


async def test_the_key_flag_comes_from_the_class(start_daemon: StartDaemon) -> None:
    keyed = '[backends.vault]\ntype = "keyed"\ngreeting = "hi"\nmodels = ["v"]\n'
    daemon = await start_daemon(config=keyed, key=None)
    client = daemon.openai()
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="vault/v", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "missing_api_key"
    assert ShoutBackend.seen == []  # refused by the daemon before the backend was asked
    # Its model list depends on the key too: without one it is not offered.
    assert "vault/v" not in [model.id async for model in client.models.list()]


async def test_a_keyed_backend_gets_the_workspace_key(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(config='[backends.vault]\ntype = "keyed"\ngreeting = "hi"\nmodels = ["v"]\n')
    await daemon.openai().chat.completions.create(model="vault/v", messages=[{"role": "user", "content": "x"}])
    assert len(ShoutBackend.seen) == 1
    assert_same_secret(ShoutBackend.seen[0].api_key, WORKSPACE_KEY, "key sent to the keyed backend")


@pytest.mark.parametrize(("text", "expected"), [
    ('[backends.gpu]\ntype = "echo"\ngreeting = "x"\n', ["backends.gpu.greeting", "only read by a shout or keyed"]),
    ('[backends.gpu]\ntype = "shout"\n', ["backends.gpu.greeting", "Field required"]),
    ('[backends.gpu]\ntype = "shout"\ngreeting = 3\n', ["backends.gpu.greeting", "valid string"]),
    ('[backends.gpu]\ntype = "grpc"\n', ["backends.gpu.type", "'shout'", "'keyed'"]),
    ('[backends.gpu]\ntype = "shout"\ngreeting = "x"\nregion = "y"\n',
     ["backends.gpu.region", "only read by a bedrock"]),
])
def test_a_registered_backends_settings_are_validated_by_its_model(home: Paths, text: str,
                                                                   expected: list[str]) -> None:
    home.ensure()
    home.config_file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(home, {})
    for part in expected:
        assert part in str(caught.value), f"{part!r} missing from {caught.value}"


def test_settings_of_a_type_are_built_by_its_model(home: Paths) -> None:
    built = BackendSettings(type="shout", greeting="hey", models=("a",))
    assert isinstance(built, ShoutSettings) and built.suffix == "!" and built.models == ("a",)
    home.ensure()
    home.config_file.write_text(CONFIG, encoding="utf-8")
    config = load_config(home, {})
    loaded = config.backends["loud"]
    assert isinstance(loaded, ShoutSettings) and (loaded.greeting, loaded.models) == ("HELLO", ("loud-1",))
    # Dumped as its own model too: the keys only this type reads are not lost.
    assert config.settings.model_dump()["backends"]["loud"]["greeting"] == "HELLO"
