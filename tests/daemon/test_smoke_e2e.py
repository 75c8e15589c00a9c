"""First end-to-end checks with the official openai SDK (fuller suites live beside this one)."""

from __future__ import annotations

from tests.conftest import WORKSPACE_KEY, StandIn, StartDaemon


async def test_sdk_lists_chats_and_streams_hosted(standin: StandIn, start_daemon: StartDaemon) -> None:
    daemon = await start_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    client = daemon.openai()
    models = [m.id async for m in client.models.list()]
    assert "echo" in models
    hosted = next(m["id"] for m in standin.api.models if m.get("active", True))
    assert hosted in models
    reply = await client.chat.completions.create(model=hosted, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    stream = await client.chat.completions.create(
        model=hosted, messages=[{"role": "user", "content": "hi there"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts)
    seen = [r for r in standin.api.requests if r.path.endswith("/chat/completions")]
    assert seen and all(r.headers["Authorization"] == f"Bearer {WORKSPACE_KEY}" for r in seen)
    assert all(daemon.token not in str(dict(r.headers)) for r in standin.api.requests)
