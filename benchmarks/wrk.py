"""Running wrk (Debian's `wrk` 4.x) with a Lua script that prints its figures as one JSON line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

MARKER = "WRKJSON "

SCRIPT = """
wrk.method = %(method)s
wrk.headers["Authorization"] = %(auth)s
%(body)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"errors":%%d,"status_errors":%%d,' ..
    '"p50_us":%%d,"p99_us":%%d,"mean_us":%%f,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def available() -> str | None:
    return shutil.which("wrk")


def lua_string(value: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in value
    return f"[{level}[{value}]{level}]"


def write_script(path: Path, method: str, token: str, body: bytes | None) -> Path:
    body_lines = ""
    if body is not None:
        body_lines = (f'wrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {lua_string(body.decode())}")
    path.write_text(SCRIPT % {"method": lua_string(method), "auth": lua_string(f"Bearer {token}"),
                              "body": body_lines, "marker": MARKER})
    return path


def run(url: str, script: Path, conns: int, duration: float, pin: list[str], timeout_s: int = 5) -> dict[str, Any]:
    """One wrk run; returns requests/s, p50/p99 (ms) and error counts."""
    command = [*pin, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", f"--timeout={timeout_s}s",
               "--latency", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, check=False)
    for line in out.stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            seconds = data["duration_us"] / 1e6
            ok = data["requests"] - data["status_errors"]
            return {
                "rps": ok / seconds if seconds else 0.0,
                "p50_ms": data["p50_us"] / 1000.0,
                "p99_ms": data["p99_us"] / 1000.0,
                "mean_ms": data["mean_us"] / 1000.0,
                "requests": data["requests"],
                "errors": data["errors"] + data["status_errors"],
                "tool": "wrk",
            }
    raise RuntimeError(f"wrk printed no figures: {out.stdout[-500:]} {out.stderr[-500:]}")
