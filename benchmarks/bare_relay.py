"""The honest minimum a proxy costs: one pooled session, swap Authorization, write chunks as they arrive.

`python -m benchmarks.bare_relay --upstream URL --api-key K [--port 0] [--loop asyncio]` prints
`READY http://127.0.0.1:PORT`. No auth, no Host check, no routing, no logging: the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str, api_key: str) -> web.Application:
    auth = f"Bearer {api_key}"

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app[SESSION].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Authorization": auth, "Content-Type": request.headers.get("Content-Type", "application/json")}
        async with request.app[SESSION].request(request.method, upstream + request.path_qs, data=body or None,
                                                headers=headers, allow_redirects=False) as up:
            out = web.StreamResponse(status=up.status,
                                     headers={"Content-Type": up.headers.get("Content-Type", "application/json")})
            if up.content_length is not None:
                out.content_length = up.content_length
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def serve(port: int, upstream: str, api_key: str) -> None:
    runner = web.AppRunner(make_app(upstream.rstrip("/"), api_key), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--loop", choices=("auto", "asyncio"), default="auto",
                        help="auto: uvloop when importable, as the daemon does")
    args = parser.parse_args()
    coroutine = serve(args.port, args.upstream, args.api_key)
    if args.loop == "auto" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
