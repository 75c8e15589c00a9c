"""Every fault and bad input is answered in our JSON error shape (issue 8), against the real server.

The daemon runs as `serve()` runs it (CompanionRunner: aiohttp's parser errors answered by us) on
loopback; upstreams are the hosted stand-in or raw loopback servers that write exact bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from aiohttp import web
from llmtune_companion import logs
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.config.workspaces import add_workspace
from llmtune_companion.server import serve

from tests.conftest import WORKSPACE_KEY, StandIn

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
HELLO = [{"role": "user", "content": "hello"}]


@dataclass
class Served:
    url: str
    token: str
    paths: Paths

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


ServeDaemon = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve_daemon(home: Paths, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServeDaemon]:
    """The daemon exactly as `llmtune-companion serve` runs it, in this test's event loop."""
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = []

    async def start(config: str = "", env: dict[str, str] | None = None) -> Served:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        home.ensure()
        home.config_file.write_text(config, encoding="utf-8")
        add_workspace(home, "default", WORKSPACE_KEY)
        loaded = load_config(home)
        logs.configure(home, "INFO", to_stderr=False)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(home, loaded, "127.0.0.1", 0, ready=ready.set_result, stop=stop))
        tasks.append((task, stop))
        url = await asyncio.wait_for(ready, 10)
        return Served(url, loaded.workspaces["default"].token, home)

    yield start
    for task, stop in tasks:
        stop.set()
        await asyncio.wait_for(task, 10)
    root = logging.getLogger("llmtune_companion")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


async def raw_exchange(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send exact bytes; read the whole answer (the server closes after an error)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def assert_our_error(status: int, body: bytes, expected_status: int, code: str | None = None) -> dict[str, Any]:
    assert status == expected_status, body[:300]
    payload = orjson.loads(body)
    error = payload["error"]
    assert set(error) == {"message", "type", "code", "details"}, error
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def log_text(paths: Paths) -> str:
    """The daemon's own and aiohttp's log records (asyncio's may come from other tests' leftovers)."""
    for handler in logging.getLogger("llmtune_companion").handlers:
        handler.flush()
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )", paths.log_file.read_text(encoding="utf-8"))
    return "\n".join(record for record in records if " asyncio: " not in record.split("\n", 1)[0])


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
                 id="20KB-header"),
    pytest.param(b"GET /v1/models?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="100KB-url"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
                 + b"\r\n", id="5000-headers"),
    pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="garbage"),
])
async def test_parser_errors_are_answered_in_our_shape_and_logged_in_one_line(
    serve_daemon: ServeDaemon, request_bytes: bytes
) -> None:
    daemon = await serve_daemon()
    status, headers, body = await raw_exchange(daemon.url, request_bytes)
    assert headers["content-type"].startswith("application/json")
    error = assert_our_error(status, body, status)
    assert 400 <= status < 500 and error["type"] == "invalid_request_error"
    text = log_text(daemon.paths)
    assert "refused a malformed request" in text
    assert "Traceback" not in text
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/healthz") as still:
        assert still.status == 200


async def test_a_false_content_encoding_is_a_400_not_a_500(serve_daemon: ServeDaemon) -> None:
    daemon = await serve_daemon()
    async with aiohttp.ClientSession() as http:
        for body, code in ((b'{"model": "echo", "messages": []}', "invalid_body"),
                           (gzip.compress(b'{"model": "echo"}')[:-12], None)):  # cut short
            async with http.post(daemon.url + "/v1/chat/completions", data=body,
                                 headers={**daemon.auth(), "Content-Type": "application/json",
                                          "Content-Encoding": "gzip"}) as response:
                assert_our_error(response.status, await response.read(), 400, code)
    text = log_text(daemon.paths)
    assert "refused a malformed request body" in text and "Traceback" not in text


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/chat/completions", {"model": "echo", "messages": HELLO, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function"),
    ("/v1/chat/completions", {"model": "echo", "messages": HELLO, "tool_choice": 7}, "tool_choice"),
    ("/v1/chat/completions", {"model": "echo", "messages": HELLO, "tool_choice": "required", "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"required": 5}}}]},
     "tools[].function.parameters.required"),
    ("/v1/completions", {"model": "echo", "prompt": 5}, "prompt"),
    ("/v1/completions", {"model": "echo", "prompt": None}, "prompt"),
])
async def test_bad_inputs_of_defect_7_get_a_400_naming_the_field(
    serve_daemon: ServeDaemon, path: str, body: dict[str, Any], field: str
) -> None:
    daemon = await serve_daemon()
    async with aiohttp.ClientSession() as http, http.post(daemon.url + path, json=body, headers=daemon.auth()) as r:
        error = assert_our_error(r.status, await r.read(), 400, "invalid_field")
    assert error["details"] == {"field": field} and f"'{field}'" in error["message"]


async def test_an_unhandled_error_is_a_json_500_logged_once_with_its_traceback(
    home: Paths, serve_daemon: ServeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A route that fails the way a bug would, added to the real app the factory builds.
    from llmtune_companion import app as app_module

    real_create_app = app_module.create_app

    def create_app_with_a_bug(*args: Any, **kwargs: Any) -> web.Application:
        app = real_create_app(*args, **kwargs)

        async def buggy(request: web.Request) -> web.Response:
            raise RuntimeError("a bug in a handler")

        app.router.add_get("/v1/bug", buggy)
        return app

    monkeypatch.setattr("llmtune_companion.server.create_app", create_app_with_a_bug)
    daemon = await serve_daemon()
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/v1/bug", headers=daemon.auth()) as r:
        assert_our_error(r.status, await r.read(), 500, "internal_error")
    text = log_text(daemon.paths)
    assert text.count("RuntimeError: a bug in a handler") == 1, "logged more or less than once"
    assert "Traceback" in text


@pytest.mark.parametrize(("path", "method"), [
    ("/v1/fine-tune/%2e%2e", "GET"),
    ("/v1/fine-tune/%2E", "GET"),
    ("/v1/fine-tune/a%0Ab", "GET"),
    ("/v1/fine-tune/a%2Fb", "GET"),
    ("/v1/models/%2e%2e/%2e%2e/inference", "POST"),
    ("/v1/models/a/%2e%2e/inference", "POST"),
    ("/v1/models/a%00b/inference", "POST"),
])
async def test_ids_placed_in_an_upstream_path_are_checked(
    serve_daemon: ServeDaemon, standin: StandIn, path: str, method: str
) -> None:
    daemon = await serve_daemon(env={"LLMTUNE_BASE_URL": standin.url})
    before = len(standin.api.requests)
    async with aiohttp.ClientSession() as http, http.request(
        method, yarl.URL(daemon.url + path, encoded=True), headers=daemon.auth(),
        json={"prompt": "hi"} if method == "POST" else None,
    ) as r:
        assert_our_error(r.status, await r.read(), 400)
    assert len(standin.api.requests) == before, "the request reached the hosted API"


async def raw_upstream(answer: bytes) -> tuple[str, asyncio.Server]:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(1)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", server


@pytest.mark.parametrize("answer", [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"zz\r\nnot a chunk\r\n", id="malformed-chunk"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 300_000 + b"\r\n\r\n", id="huge-header"),
])
async def test_a_broken_upstream_answer_is_a_502_upstream_broken(serve_daemon: ServeDaemon, answer: bytes) -> None:
    url, server = await raw_upstream(answer)
    try:
        daemon = await serve_daemon(config=f'[backends.raw]\ntype = "openai"\nurl = "{url}/v1"\nmodels = ["m"]\n'
                                           "[upstream]\nmax_retries = 0\n")
        async with aiohttp.ClientSession() as http, http.post(
            daemon.url + "/v1/chat/completions", headers=daemon.auth(), json={"model": "raw/m", "messages": HELLO}
        ) as r:
            assert_our_error(r.status, await r.read(), 502, "upstream_broken")
    finally:
        server.close()


# -- fuzz: a corpus of malformed requests to every endpoint --------------------------------------

BAD_BODIES: list[bytes] = [
    b"", b"null", b"[]", b"{", b'"text"', b"5", b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000,
    *(orjson.dumps(body) for body in (
        {"model": 5}, {"model": ""}, {"model": None}, {"model": "echo", "messages": "hi"},
        {"model": "echo", "messages": [5]}, {"model": "echo", "messages": [{}]},
        {"model": "echo", "messages": [{"role": "user", "content": {"a": 1}}], "stream": True},
        {"model": "echo", "messages": HELLO, "tools": "x"}, {"model": "echo", "messages": HELLO, "tools": [5]},
        {"model": "echo", "messages": HELLO, "tool_choice": {"function": 5}},
        {"model": "echo", "prompt": {"a": 1}}, {"model": "echo", "input": 5}, {"model": "echo", "input": [{}]},
        {"model": "echo/../../x", "messages": HELLO}, {"model": "a\nb", "messages": HELLO},
        {"decision": 5}, {"decision": "maybe"}, {"id": "../x"}, {"id": 5}, {"workspace": 5},
        {"tools": "loose"}, {"model": "echo", "messages": HELLO, "max_tokens": "many", "stream": "yes"},
    )),
]
BAD_PATH_VALUES = ["x", "..", "%2e%2e", "a%00b", "a%0d%0aSet-Cookie:x", "%ff", "a" * 3000]


def fuzz_routes(home: Paths) -> list[tuple[str, str]]:
    from llmtune_companion.app import create_app

    app = create_app(home, watch=False)
    routes = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        if route.resource is not None and route.resource.canonical == "/companion/v1/events":
            continue  # an endless event stream by design
        if route.resource is not None and route.resource.canonical == "/companion/v1/shutdown":
            continue  # stops the daemon by design (tests/daemon/cli/test_lifecycle.py)
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template:
            routes.add((route.method, str(template)))
    return sorted(routes)


def fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, template)


async def test_fuzz_every_endpoint_answers_4xx_json_and_keeps_serving(
    home: Paths, serve_daemon: ServeDaemon
) -> None:
    daemon = await serve_daemon(config="[hosted]\nenabled = false\n")
    control = (home.root / "control-token").read_text().strip()
    routes = fuzz_routes(home)
    assert len(routes) >= 15, routes
    failures: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for method, template in routes:
            token = control if template.startswith("/companion/") else daemon.token
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            values = BAD_PATH_VALUES if "{" in template else ["x"]
            for value in values:
                url = yarl.URL(daemon.url + fill(template, value), encoded=True)
                for body in (BAD_BODIES if method == "POST" else [b""]):
                    async with http.request(method, url, data=body or None, headers=headers) as response:
                        raw = await response.read()
                        status, content_type = response.status, response.content_type
                    where = f"{method} {template} [{value[:20]}] {body[:40]!r}"
                    if status >= 500:
                        failures.append(f"{where}: HTTP {status} {raw[:120]!r}")
                    elif status >= 400 and template.startswith("/dashboard/") and content_type == "text/html":
                        pass  # a browser page's own error page (the dashboard's login link)
                    elif status >= 400:
                        try:
                            error = orjson.loads(raw)["error"]
                            assert set(error) == {"message", "type", "code", "details"}
                        except Exception:
                            failures.append(f"{where}: not our error shape: {raw[:120]!r}")
                    elif status < 200:
                        failures.append(f"{where}: HTTP {status}")
            async with http.get(daemon.url + "/healthz") as alive:
                assert alive.status == 200, f"the daemon stopped serving after {method} {template}"
    assert not failures, "\n".join(failures[:30])
    assert "Traceback" not in log_text(daemon.paths)
