"""The companion's benchmark: `python -m benchmarks [--quick] [--json PATH]`.

On loopback, in one run, the same load goes (a) straight to an upstream (benchmarks/fast_upstream.py,
much faster than what it measures, as the targets assume; `--upstream standin` uses the faithful
hosted stand-in instead), (b) through a bare aiohttp relay (benchmarks/bare_relay.py: the least a
Python proxy can cost) and (c) through the full daemon (auth, Host check, routing, key injection and
request logging all on). It prints a table of
figures and ratios, PASS/MISS per target, and a JSON summary (also written to --json PATH).

Placement on a 2-core machine: the proxy under test is pinned to core 0 (`taskset -c 0`), the
upstream and the load generator to core 1. Non-streamed load comes from wrk when it is installed,
else from benchmarks/loadgen.py worker processes; streams are always timed by loadgen (wrk cannot
see a first chunk). Every cell is bounded in time; all child processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks import loadgen, wrk

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk_bench_standin_key_0123456789"
MODEL = "meta-llama/Llama-3.3-70B-Instruct"
CHAT_BODY = orjson.dumps({"model": MODEL, "max_tokens": 32,
                          "messages": [{"role": "user", "content": "Say hello in one short sentence."}]})
TARGETS = ("upstream", "bare", "daemon")
LABELS = {"upstream": "upstream (direct)", "bare": "bare relay", "daemon": "daemon",
          "bare_asyncio": "bare relay, asyncio loop", "daemon_asyncio": "daemon, asyncio loop"}


def stream_body(chunks: int, gap_ms: float) -> bytes:
    return orjson.dumps({"model": MODEL, "stream": True, "x_standin_chunks": chunks, "x_standin_gap_ms": gap_ms,
                         "messages": [{"role": "user", "content": "Stream please."}]})


def big_body(kb: int) -> bytes:
    words = ("def handler(request):\n    return relay(request)  # context line\n" * (kb * 1024 // 64 + 1))
    return orjson.dumps({"model": MODEL, "max_tokens": 32,
                         "messages": [{"role": "system", "content": "You are a coding assistant."},
                                      {"role": "user", "content": words[: kb * 1024]}]})


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Harness:
    root: Path
    pin_proxy: list[str]
    pin_load: list[str]
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, command: list[str], *, env: dict[str, str] | None = None, proxy: bool,
              ready: str, timeout: float = 15.0) -> tuple[Child, str, float]:
        """Start a child pinned to its core and wait for the line containing `ready`; returns (child, line, s)."""
        stderr = open(self.root / f"{name}.stderr.log", "ab")
        started = time.perf_counter()
        popen = subprocess.Popen([*(self.pin_proxy if proxy else self.pin_load), *command], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
        stderr.close()
        child = Child(name, popen)
        self.children.append(child)
        assert popen.stdout is not None
        deadline = started + timeout
        buffer = b""
        while time.perf_counter() < deadline:
            readable, _, _ = select.select([popen.stdout], [], [], 0.05)
            if readable:
                data = os.read(popen.stdout.fileno(), 65536)
                if not data:
                    break
                buffer += data
                for line in buffer.decode(errors="replace").splitlines():
                    if ready in line:
                        return child, line, time.perf_counter() - started
            elif popen.poll() is not None:
                break
        self.stop(child)
        log_text = (self.root / f"{name}.stderr.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not become ready: {buffer.decode(errors='replace')}\n{log_text}")

    def stop(self, child: Child) -> None:
        if child.popen.poll() is None:
            child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(5)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(5)
        if child.popen.stdout is not None:
            child.popen.stdout.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child)


def pinning() -> tuple[list[str], list[str], str]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if shutil.which("taskset") and len(cpus) >= 2:
        proxy, load = str(cpus[0]), str(cpus[1])
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpus[1]})  # this process joins the load side
        where = f"proxy on cpu {proxy}; upstream and load on cpu {load}"
        return ["taskset", "-c", proxy], ["taskset", "-c", load], where
    return [], [], "not pinned (needs taskset and 2 CPUs)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_env(home: Path, upstream_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTUNE_")}
    env.update({"LLMTUNE_COMPANION_HOME": str(home), "LLMTUNE_BASE_URL": upstream_url, "LLMTUNE_API_KEY": API_KEY})
    return env


def local_token(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "llmtune_companion", "token"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes spent so far (from /proc/stat), to tell how busy the machine was."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_tree_seconds() -> float:
    """CPU seconds of this process and every child it has waited for (all of them, by the end)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RSSSampler(threading.Thread):
    """VmRSS of some pids every 50 ms, with the peak kept per pid since the last reset."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.stopped = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def reset(self) -> None:
        self.peak = {}

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            for name, pid in list(self.pids.items()):
                value = rss_kb(pid)
                if value is not None and value > self.peak.get(name, 0):
                    self.peak[name] = value


# -- targets and load ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    token: str
    chat_path: str
    models_path: str
    child: Child | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@dataclass
class Load:
    harness: Harness
    use_wrk: bool
    scripts: dict[tuple[str, str], Path] = field(default_factory=dict)

    def _script(self, target: Target, method: str, body: bytes | None, key: str) -> Path:
        path = self.harness.root / f"wrk-{target.name}-{key}.lua"
        if (target.name, key) not in self.scripts:
            wrk.write_script(path, method, target.token, body)
            self.scripts[(target.name, key)] = path
        return path

    def _request_file(self, target: Target, method: str, path: str, body: bytes | None, key: str) -> Path:
        file = self.harness.root / f"req-{target.name}-{key}.http"
        file.write_bytes(loadgen.build_request(method, "127.0.0.1", target.port, path, target.token, body))
        return file

    def workers(self, target: Target, method: str, path: str, body: bytes | None, key: str, conns: int, *,
                duration: float | None = None, count: int | None = None, stagger_ms: float = 0.0,
                processes: int = 1) -> dict[str, Any]:
        request_file = self._request_file(target, method, path, body, key)
        processes = max(1, min(processes, conns))
        split = [conns // processes + (1 if i < conns % processes else 0) for i in range(processes)]
        running = []
        for share in split:
            command = [*self.harness.pin_load, sys.executable, "-m", "benchmarks.loadgen", "--port",
                       str(target.port), "--request-file", str(request_file), "--conns", str(share),
                       "--stagger-ms", str(stagger_ms)]
            command += ["--duration", str(duration)] if duration is not None else ["--count", str(count)]
            running.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        merged: dict[str, Any] = {"latency_us": [], "ttfb_us": [], "events": [], "errors": 0, "elapsed": []}
        for popen in running:
            try:
                out, err = popen.communicate(timeout=(duration or 0) + (count or 0) * 5 + 60)
            except subprocess.TimeoutExpired:
                popen.kill()
                out, err = popen.communicate()
            if popen.returncode != 0:
                raise RuntimeError(f"load worker failed: {err.decode(errors='replace')[-1500:]}")
            part = orjson.loads(out)
            for name in ("latency_us", "ttfb_us", "events"):
                merged[name].extend(part[name])
            merged["errors"] += part["errors"]
            merged["elapsed"].append(part["elapsed"])
        merged["elapsed"] = statistics.fmean(merged["elapsed"])
        return merged

    def requests(self, target: Target, method: str, path: str, body: bytes | None, key: str, conns: int,
                 duration: float, warmup: float) -> dict[str, Any]:
        """Closed-loop load at `conns` concurrency: requests/s, latency percentiles (ms) and, for a proxy,
        the CPU it spent per request (us)."""
        pid = target.child.pid if target.child is not None and target.name != "upstream" else None
        if self.use_wrk:
            script = self._script(target, method, body, key)
            url = target.url + path
            if warmup:
                wrk.run(url, script, conns, warmup, self.harness.pin_load)
            before = cpu_seconds(pid) if pid else None
            result = wrk.run(url, script, conns, duration, self.harness.pin_load)
        else:
            processes = 1 if conns == 1 else 2
            if warmup:
                self.workers(target, method, path, body, key, conns, duration=warmup, processes=processes)
            before = cpu_seconds(pid) if pid else None
            raw = self.workers(target, method, path, body, key, conns, duration=duration, processes=processes)
            latency = raw["latency_us"]
            result = {"rps": len(latency) / raw["elapsed"] if raw["elapsed"] else 0.0,
                      "p50_ms": percentile(latency, 50) / 1000, "p99_ms": percentile(latency, 99) / 1000,
                      "mean_ms": statistics.fmean(latency) / 1000 if latency else float("nan"),
                      "requests": len(latency), "errors": raw["errors"], "tool": "loadgen"}
        after = cpu_seconds(pid) if pid else None
        if before is not None and after is not None and result["requests"]:
            result["cpu_us_per_req"] = (after - before) / result["requests"] * 1e6
        return result

    def stream_workers(self, target: Target, body: bytes, key: str, conns: int, *, duration: float | None = None,
                       count: int | None = None, stagger_ms: float = 0.0) -> dict[str, Any]:
        return self.workers(target, "POST", target.chat_path, body, key, conns, duration=duration, count=count,
                            stagger_ms=stagger_ms)

    def streams(self, target: Target, body: bytes, key: str, conns: int, *, duration: float | None = None,
                count: int | None = None, stagger_ms: float = 0.0) -> dict[str, Any]:
        return summarize_rounds([self.stream_workers(target, body, key, conns, duration=duration, count=count,
                                                     stagger_ms=stagger_ms)])


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Stream figures over one or more rounds: latencies pooled, rates the median round's."""
    total = [v for r in rounds for v in r["latency_us"]]
    first = [v for r in rounds for v in r["ttfb_us"]]
    events = [v for r in rounds for v in r["events"]]

    def rate(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    return {"streams": len(total), "errors": sum(r["errors"] for r in rounds), "rounds": len(rounds),
            "ttfc_p50_ms": percentile(first, 50) / 1000, "ttfc_mean_ms": mean(first) / 1000,
            "total_p50_ms": percentile(total, 50) / 1000, "total_mean_ms": mean(total) / 1000,
            "total_se_ms": (statistics.stdev(total) / len(total) ** 0.5 / 1000) if len(total) > 1 else 0.0,
            "events_per_stream": round(mean(events), 1) if events else 0,
            "streams_per_s": rate([len(r["latency_us"]) / r["elapsed"] for r in rounds if r["elapsed"]]),
            "events_per_s": rate([sum(r["events"]) / r["elapsed"] for r in rounds if r["elapsed"]])}


def percentile(values: list[int] | list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return float(ordered[index])


def mean(values: list[int]) -> float:
    return statistics.fmean(values) if values else float("nan")


# -- single measurements ------------------------------------------------------------------------


def http_get(port: int, path: str, token: str, timeout: float = 2.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


DASHBOARD_FILES = ("/dashboard/", "/dashboard/app.css", "/dashboard/app.js")


def dashboard_first_load(url: str, runs: int = 20) -> dict[str, float]:
    """The dashboard's first load as an uncached browser makes it (page, stylesheet, script on one
    connection): the median time and the bytes, from the daemon under test while the relay is idle."""
    host, _, port = url.removeprefix("http://").partition(":")
    times: list[float] = []
    size = 0
    for _ in range(runs):
        connection = http.client.HTTPConnection(host, int(port.rstrip("/")), timeout=5)
        started = time.perf_counter()
        size = 0
        try:
            for path in DASHBOARD_FILES:
                connection.request("GET", path)
                response = connection.getresponse()
                size += len(response.read())
                if response.status != 200:
                    raise RuntimeError(f"GET {path} answered {response.status}")
        finally:
            connection.close()
        times.append(time.perf_counter() - started)
    return {"p50_ms": round(statistics.median(times) * 1000, 2), "kb": round(size / 1024, 1)}


def upstream_command(kind: str) -> list[str]:
    module = "benchmarks.fast_upstream" if kind == "fast" else "tests.support.hosted_standin"
    extra = ["--no-record"] if kind == "standin" else []
    return [sys.executable, "-m", module, "--port", "0", "--api-key", API_KEY, *extra]


def serve_command(port: int, *, asyncio_loop: bool = False) -> list[str]:
    if asyncio_loop:  # the daemon picks uvloop whenever it imports; hide it to measure plain asyncio
        return [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; "
                "from llmtune_companion.cli import main; sys.exit(main())", "serve", "--port", str(port)]
    return [sys.executable, "-m", "llmtune_companion", "serve", "--port", str(port)]


def start_daemon(harness: Harness, name: str, upstream: str, *, asyncio_loop: bool = False,
                 config: str | None = None) -> Target:
    home = harness.root / name
    env = daemon_env(home, upstream)
    token = local_token(env)
    if config is not None:
        (home / "config.toml").write_text(config)
    child, line, _ = harness.spawn(name, serve_command(0, asyncio_loop=asyncio_loop), env=env, proxy=True,
                                   ready="serving at ")
    url = line.split("serving at ", 1)[1].strip().removesuffix("/v1")
    target = Target(name, url, token, "/v1/chat/completions", "/v1/models", child)
    if http_get(target.port, "/v1/models", token) != 200:
        raise RuntimeError(f"{name} does not answer /v1/models")
    return target


def start_bare(harness: Harness, name: str, upstream: str, *, asyncio_loop: bool = False) -> Target:
    command = [sys.executable, "-m", "benchmarks.bare_relay", "--upstream", upstream, "--api-key", API_KEY]
    if asyncio_loop:
        command += ["--loop", "asyncio"]
    child, line, _ = harness.spawn(name, command, proxy=True, ready="READY ")
    return Target(name, line.split()[1], "not-checked", "/v1/chat/completions", "/api/agent/models", child)


def cold_start(harness: Harness, upstream: str, index: int) -> dict[str, float]:
    """Spawn `serve` on a fresh settings dir (empty model cache) and time the first /v1/models 200."""
    home = harness.root / f"cold-{index}"
    env = daemon_env(home, upstream)
    token = local_token(env)  # the client needs its token first; this also creates the settings dir
    port = free_port()
    started = time.perf_counter()
    stderr = open(harness.root / f"cold-{index}.stderr.log", "ab")
    popen = subprocess.Popen([*harness.pin_proxy, *serve_command(port)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    stderr.close()
    child = Child(f"cold-{index}", popen)
    harness.children.append(child)
    listening = answered = float("nan")
    try:
        while time.perf_counter() - started < 10:
            try:
                status = http_get(port, "/v1/models", token, timeout=5)
            except OSError:
                time.sleep(0.002)
                continue
            if listening != listening:
                listening = time.perf_counter() - started
            if status == 200:
                answered = time.perf_counter() - started
                break
            time.sleep(0.002)
    finally:
        harness.stop(child)
    return {"first_answer_s": answered, "listening_s": listening}


# -- the run --------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    duration = 1.0 if quick else 2.0
    warmup = 1.0
    concurrencies = (1, 16, 64)
    pin_proxy, pin_load, placement = pinning()
    use_wrk = wrk.available() is not None and not args.no_wrk
    root = Path(tempfile.mkdtemp(prefix="llmtune-bench-"))
    harness = Harness(root, pin_proxy, pin_load)
    sampler = RSSSampler()
    sampler.start()
    load = Load(harness, use_wrk)
    busy_start, own_start, wall_start = machine_busy_seconds(), own_tree_seconds(), time.perf_counter()
    results: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "placement": placement,
            "load_generator": "wrk" if use_wrk else "python loadgen (benchmarks/loadgen.py)",
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
            if use_wrk else None,
            "upstream": args.upstream, "cell_seconds": duration, "quick": quick, **versions(),
        }
    }
    try:
        log(f"workdir {root}; {placement}; load generator: {results['environment']['load_generator']}")
        standin, line, _ = harness.spawn("upstream", upstream_command(args.upstream), proxy=False, ready="READY ")
        upstream_url = line.split()[1]
        upstream = Target("upstream", upstream_url, API_KEY, "/v1/chat/completions", "/api/agent/models", standin)

        log("cold start (spawn serve -> first 200 from /v1/models)")
        colds = [cold_start(harness, upstream_url, i) for i in range(1 if quick else 3)]
        results["cold_start"] = {"runs": colds,
                                 "first_answer_s": statistics.median(c["first_answer_s"] for c in colds),
                                 "listening_s": statistics.median(c["listening_s"] for c in colds)}

        bare = start_bare(harness, "bare", upstream_url)
        daemon = start_daemon(harness, "daemon", upstream_url)
        targets = {"upstream": upstream, "bare": bare, "daemon": daemon}
        time.sleep(0.5)
        assert daemon.child is not None and bare.child is not None
        results["rss_mb"] = {"daemon_idle": kb_mb(rss_kb(daemon.child.pid)),
                             "bare_idle": kb_mb(rss_kb(bare.child.pid))}
        sampler.watch("daemon", daemon.child.pid)
        log("dashboard first load (page, stylesheet, script)")
        results["dashboard"] = dashboard_first_load(daemon.url)
        sampler.watch("bare", bare.child.pid)

        results["chat"] = {}
        for conns in concurrencies:
            for name in TARGETS:
                log(f"non-stream chat c={conns} -> {name}")
                results["chat"].setdefault(str(conns), {})[name] = load.requests(
                    targets[name], "POST", targets[name].chat_path, CHAT_BODY, "chat", conns, duration, warmup)
            if conns == concurrencies[0]:
                results["rss_mb"]["daemon_warm"] = kb_mb(rss_kb(daemon.child.pid))

        results["chat_64kb"] = {}
        body_64k = big_body(64)
        for name in TARGETS:
            log(f"non-stream chat with a 64 KB prompt c=1 -> {name}")
            results["chat_64kb"][name] = load.requests(targets[name], "POST", targets[name].chat_path, body_64k,
                                                       "chat64k", 1, duration, 0.5)

        results["models"] = {}
        for conns in (1, 16):
            for name in TARGETS:
                log(f"model list c={conns} -> {name} {targets[name].models_path}")
                results["models"].setdefault(str(conns), {})[name] = load.requests(
                    targets[name], "GET", targets[name].models_path, None, "models", conns, duration, 0.5)

        # An absolute target (chunks/s), so a burst of noise from elsewhere on the machine would decide it:
        # the three targets take turns in short rounds and each reports the median round.
        rounds = 3 if quick else 5
        for name in TARGETS:
            load.streams(targets[name], stream_body(50, 0), "gap0", 1, duration=0.5)
        raw_rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
        for index in range(rounds):
            for name in TARGETS:
                log(f"50-chunk streams, no gaps, c=1, round {index + 1} of {rounds} -> {name}")
                raw_rounds[name].append(load.stream_workers(targets[name], stream_body(50, 0), "gap0", 1,
                                                            duration=duration * 1.5 / rounds))
        results["stream_gap0"] = {name: summarize_rounds(raw_rounds[name]) for name in TARGETS}

        gap_count = 3 if quick else 6
        results["stream_gap20"] = {}
        for name in TARGETS:
            log(f"50-chunk streams, 20 ms gaps, c=1, {gap_count} in a row -> {name}")
            results["stream_gap20"][name] = load.streams(targets[name], stream_body(50, 20), "gap", 1,
                                                         count=gap_count)

        results["stream_long"] = {}
        for name in TARGETS:
            log(f"one 5000-chunk stream, no gaps, x{2 if quick else 3} -> {name}")
            results["stream_long"][name] = load.streams(targets[name], stream_body(5000, 0), "long", 1,
                                                        count=2 if quick else 3)

        results["rss_mb"]["daemon_peak_under_load"] = kb_mb(sampler.peak.get("daemon"))
        results["rss_mb"]["bare_peak_under_load"] = kb_mb(sampler.peak.get("bare"))
        time.sleep(1.0)
        results["rss_mb"]["daemon_after_load"] = kb_mb(rss_kb(daemon.child.pid))
        results["rss_mb"]["bare_after_load"] = kb_mb(rss_kb(bare.child.pid))

        if not quick and not args.no_loops:
            harness.stop(bare.child)
            harness.stop(daemon.child)
            results["loops"] = measure_loops(harness, load, upstream, upstream_url, duration, warmup)
    finally:
        sampler.stopped.set()
        harness.stop_all()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    busy_end, own_end, wall_end = machine_busy_seconds(), own_tree_seconds(), time.perf_counter()
    if busy_start is not None and busy_end is not None:
        # What other programs on this machine used meanwhile, in CPUs (2.0 = both cores all the time).
        results["environment"]["other_load_cpus"] = round(
            max(0.0, (busy_end - busy_start) - (own_end - own_start)) / (wall_end - wall_start), 2)
    results["orjson"] = orjson_micro()
    return results


def measure_loops(harness: Harness, load: Load, upstream: Target, upstream_url: str, duration: float,
                  warmup: float) -> dict[str, Any]:
    """The same proxies on the stock asyncio loop, to see what uvloop pays."""
    out: dict[str, Any] = {}
    for name, starter in (("bare_asyncio", start_bare), ("daemon_asyncio", start_daemon)):
        target = starter(harness, name, upstream_url, asyncio_loop=True)
        row: dict[str, Any] = {}
        for conns in (1, 16):
            log(f"non-stream chat c={conns} -> {name}")
            row[f"chat_c{conns}"] = load.requests(target, "POST", target.chat_path, CHAT_BODY, "chat", conns,
                                                  duration, warmup)
        log(f"50-chunk streams, no gaps, c=1 -> {name}")
        row["stream_gap0"] = load.streams(target, stream_body(50, 0), "gap0", 1, duration=duration)
        assert target.child is not None
        harness.stop(target.child)
        out[name] = row
    # Informative: the daemon with its one optional per-request cost, the request log line, switched off.
    target = start_daemon(harness, "daemon_nolog", upstream_url, config="[server]\nlog_requests = false\n")
    row = {}
    for conns in (1, 16):
        log(f"non-stream chat c={conns} -> daemon with log_requests = false")
        row[f"chat_c{conns}"] = load.requests(target, "POST", target.chat_path, CHAT_BODY, "chat", conns,
                                              duration, warmup)
    assert target.child is not None
    harness.stop(target.child)
    out["daemon_nolog"] = row
    return out


def orjson_micro() -> dict[str, Any]:
    """What parsing a request body costs with orjson and with the standard json module (us per call)."""
    out: dict[str, Any] = {}
    for label, body in (("small", CHAT_BODY), ("64kb", big_body(64))):
        for name, loads in (("orjson", orjson.loads), ("json", json.loads)):
            rounds = 2000 if label == "small" else 200
            started = time.perf_counter()
            for _ in range(rounds):
                loads(body)
            out[f"{name}_{label}_us"] = round((time.perf_counter() - started) / rounds * 1e6, 2)
    return out


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for module in ("aiohttp", "uvloop", "orjson"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = None
    return out


def kb_mb(value: int | None) -> float | None:
    return None if value is None else round(value / 1024, 1)


# -- verdicts and printing ----------------------------------------------------------------------


def added(cell: dict[str, Any], base: dict[str, Any], key: str) -> float:
    return float(cell[key] - base[key])


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, goal: str, ok: bool, detail: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "pass": bool(ok), "detail": detail})

    c1 = r["chat"]["1"]
    d_add = added(c1["daemon"], c1["upstream"], "p50_ms")
    b_add = added(c1["bare"], c1["upstream"], "p50_ms")
    ratio = d_add / b_add if b_add > 0 else float("inf")
    check("chat c=1: added p50, daemon / bare", round(ratio, 2), "<= 1.3x", ratio <= 1.3,
          f"daemon +{d_add * 1000:.0f} us, bare +{b_add * 1000:.0f} us over the upstream's p50")
    c16 = r["chat"]["16"]
    share = c16["daemon"]["rps"] / c16["bare"]["rps"] if c16["bare"]["rps"] else 0.0
    check("chat c=16: req/s, daemon / bare", round(share, 2), ">= 0.70", share >= 0.70,
          f"daemon {c16['daemon']['rps']:.0f}/s, bare {c16['bare']['rps']:.0f}/s; CPU per request "
          f"{fmt(c16['daemon'].get('cpu_us_per_req'), 0)} vs {fmt(c16['bare'].get('cpu_us_per_req'), 0)} us")
    z = r["stream_gap0"]
    ttfc = added(z["daemon"], z["upstream"], "ttfc_p50_ms")
    check("stream: first chunk added (p50)", round(ttfc, 3), "<= 1 ms", ttfc <= 1.0,
          f"daemon {z['daemon']['ttfc_p50_ms']:.3f} ms, upstream {z['upstream']['ttfc_p50_ms']:.3f} ms, "
          f"bare +{added(z['bare'], z['upstream'], 'ttfc_p50_ms'):.3f} ms ({z['daemon']['streams']} streams)")
    g = r["stream_gap20"]
    total = added(g["daemon"], g["upstream"], "total_mean_ms")
    noise = 2 * (g["daemon"]["total_se_ms"] ** 2 + g["upstream"]["total_se_ms"] ** 2) ** 0.5
    check("20 ms-gap stream: total added (mean)", round(total, 2), "~0: <= 1 ms (+2 SE)", total - noise <= 1.0,
          f"daemon {g['daemon']['total_mean_ms']:.1f} ms, upstream {g['upstream']['total_mean_ms']:.1f} ms, "
          f"+/-{noise:.1f} ms (2 SE, the upstream's timer jitter); bare "
          f"{added(g['bare'], g['upstream'], 'total_mean_ms'):+.2f} ms")
    rate = z["daemon"]["events_per_s"]
    check("0-gap 50-chunk streams: chunks/s at c=1", round(rate), ">= 50,000", rate >= 50000,
          f"median of {z['daemon'].get('rounds', 1)} interleaved rounds; the upstream alone serves "
          f"{z['upstream']['events_per_s']:.0f}/s, through the bare relay {z['bare']['events_per_s']:.0f}/s")
    long = r["stream_long"]
    rate = long["daemon"]["events_per_s"]
    check("0-gap 5000-chunk stream: chunks/s relayed", round(rate), ">= 50,000", rate >= 50000,
          f"steady state without per-request costs; upstream alone {long['upstream']['events_per_s']:.0f}/s, "
          f"bare {long['bare']['events_per_s']:.0f}/s")
    m1, m16 = r["models"]["1"], r["models"]["16"]
    models_ok = m1["daemon"]["p50_ms"] <= m1["bare"]["p50_ms"] and m16["daemon"]["rps"] >= m16["bare"]["rps"]
    check("/v1/models (cache) vs bare relay forwarding", round(m16["daemon"]["rps"] / m16["bare"]["rps"], 2),
          "as fast or faster", models_ok,
          f"p50 {m1['daemon']['p50_ms']:.3f} vs {m1['bare']['p50_ms']:.3f} ms; "
          f"c=16 {m16['daemon']['rps']:.0f} vs {m16['bare']['rps']:.0f} req/s")
    rss = r["rss_mb"]
    check("daemon RSS idle", rss["daemon_idle"], "<= 60 MB", (rss["daemon_idle"] or 1e9) <= 60,
          "VmRSS after start and one /v1/models")
    growth = max(rss["daemon_peak_under_load"] - rss["daemon_warm"], rss["daemon_after_load"] - rss["daemon_warm"])
    check("daemon RSS flat under load", round(growth, 1), "<= 10 MB over warm", growth <= 10,
          f"warm {rss['daemon_warm']} MB, peak {rss['daemon_peak_under_load']} MB, "
          f"after {rss['daemon_after_load']} MB")
    cold = r["cold_start"]["first_answer_s"]
    check("cold start to first answer", round(cold, 3), "<= 1 s", cold <= 1.0,
          f"port listening after {r['cold_start']['listening_s']:.3f} s (median of {len(r['cold_start']['runs'])})")
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def print_report(r: dict[str, Any]) -> None:
    env = r["environment"]
    print()
    print(f"llmtune-companion benchmark ({'quick' if env['quick'] else 'full'} run, {env['cell_seconds']:.0f} s cells)")
    print(f"python {env['python']}, aiohttp {env['aiohttp']}, uvloop {env['uvloop']}, orjson {env['orjson']}; "
          f"{env['cpus']} cpus, {env['placement']}")
    print(f"load generator: {env['load_generator']}{' (' + env['wrk'] + ')' if env.get('wrk') else ''}; "
          "streams timed by benchmarks/loadgen.py")
    if env.get("other_load_cpus") is not None:
        print(f"other programs used {env['other_load_cpus']:.2f} CPUs on average during the run"
              + ("  (a busy machine: figures are noisy)" if env["other_load_cpus"] > 0.15 else ""))
    print()
    print("non-stream chat (POST /v1/chat/completions, ~130 B request, ~300 B answer)")
    print(f"  {'c':>3}  {'target':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'vs bare':>8} "
          f"{'cpu us/req':>10} {'err':>4}")
    for conns, row in r["chat"].items():
        for name in TARGETS:
            cell = row[name]
            plus = "" if name == "upstream" else fmt(added(cell, row["upstream"], "p50_ms"), 3)
            vs = "" if name == "upstream" else f"{cell['rps'] / row['bare']['rps']:.2f}x"
            print(f"  {conns:>3}  {LABELS[name]:<18} {cell['rps']:>8.0f} {fmt(cell['p50_ms'], 3):>8} "
                  f"{fmt(cell['p99_ms'], 3):>8} {plus:>8} {vs:>8} {fmt(cell.get('cpu_us_per_req'), 0):>10} "
                  f"{cell['errors']:>4}")
    c1 = r["chat"]["1"]
    b_add, d_add = added(c1["bare"], c1["upstream"], "p50_ms"), added(c1["daemon"], c1["upstream"], "p50_ms")
    print(f"  added p50 at c=1: daemon {d_add * 1000:.0f} us / bare {b_add * 1000:.0f} us = "
          f"{d_add / b_add if b_add > 0 else float('inf'):.2f}x")
    row = r["chat_64kb"]
    print("  64 KB prompt, c=1: " + ";  ".join(
        f"{LABELS[n]} {row[n]['rps']:.0f}/s p50 {row[n]['p50_ms']:.3f} ms" for n in TARGETS))
    print()
    print("model list (upstream and bare relay: GET /api/agent/models; daemon: GET /v1/models from its cache)")
    print(f"  {'c':>3}  {'target':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for conns, row in r["models"].items():
        for name in TARGETS:
            cell = row[name]
            print(f"  {conns:>3}  {LABELS[name]:<18} {cell['rps']:>8.0f} {fmt(cell['p50_ms'], 3):>8} "
                  f"{fmt(cell['p99_ms'], 3):>8}")
    print()
    print("streams, c=1 (SSE: role + 50 content chunks + finish + [DONE] = 53 events per stream)")
    print(f"  {'test':<22} {'target':<18} {'n':>5} {'1st p50':>8} {'+1st':>7} {'total p50':>10} "
          f"{'total mean':>10} {'+total':>7} {'events/s':>9}")
    for key, label in (("stream_gap0", "50 chunks, no gaps"), ("stream_gap20", "50 chunks, 20 ms gaps"),
                       ("stream_long", "5000 chunks, no gaps")):
        row = r[key]
        for name in TARGETS:
            cell = row[name]
            plus1 = "" if name == "upstream" else fmt(added(cell, row["upstream"], "ttfc_p50_ms"), 3)
            plust = "" if name == "upstream" else fmt(added(cell, row["upstream"], "total_mean_ms"), 2)
            print(f"  {label:<22} {LABELS[name]:<18} {cell['streams']:>5} {fmt(cell['ttfc_p50_ms'], 3):>8} "
                  f"{plus1:>7} {fmt(cell['total_p50_ms'], 2):>10} {fmt(cell['total_mean_ms'], 2):>10} {plust:>7} "
                  f"{cell['events_per_s']:>9.0f}")
    print()
    rss = r["rss_mb"]
    print(f"RSS (VmRSS, MB): daemon idle {rss['daemon_idle']}, warm {rss['daemon_warm']}, peak under load "
          f"{rss['daemon_peak_under_load']}, after load {rss['daemon_after_load']}  |  bare relay idle "
          f"{rss['bare_idle']}, peak {rss['bare_peak_under_load']}, after {rss['bare_after_load']}")
    cold = r["cold_start"]
    print(f"cold start: spawn serve -> first 200 /v1/models {cold['first_answer_s'] * 1000:.0f} ms (median; port "
          f"listening after {cold['listening_s'] * 1000:.0f} ms; runs "
          + ", ".join(f"{c['first_answer_s'] * 1000:.0f}" for c in cold["runs"]) + " ms)")
    if "dashboard" in r:
        print(f"dashboard first load: {r['dashboard']['p50_ms']:.1f} ms for {r['dashboard']['kb']} KB (median of 20)")
    if "loops" in r:
        print()
        print("event loop: uvloop (the default when importable) vs stock asyncio")
        for proxy in ("bare", "daemon"):
            other = r["loops"][f"{proxy}_asyncio"]
            uv_c1, uv_c16 = r["chat"]["1"][proxy], r["chat"]["16"][proxy]
            uv_stream = r["stream_gap0"][proxy]
            print(f"  {LABELS[proxy]:<11} c=1 p50 {uv_c1['p50_ms']:.3f} vs {other['chat_c1']['p50_ms']:.3f} ms; "
                  f"c=16 {uv_c16['rps']:.0f} vs {other['chat_c16']['rps']:.0f} req/s "
                  f"({uv_c16['rps'] / other['chat_c16']['rps']:.2f}x, CPU/request "
                  f"{fmt(uv_c16.get('cpu_us_per_req'), 0)} vs {fmt(other['chat_c16'].get('cpu_us_per_req'), 0)} us); "
                  f"0-gap streams {uv_stream['events_per_s']:.0f} vs {other['stream_gap0']['events_per_s']:.0f} "
                  "events/s")
    if "loops" in r and "daemon_nolog" in r["loops"]:
        nolog, c1 = r["loops"]["daemon_nolog"], r["chat"]["1"]
        add = nolog["chat_c1"]["p50_ms"] - c1["upstream"]["p50_ms"]
        bare_add = c1["bare"]["p50_ms"] - c1["upstream"]["p50_ms"]
        print(f"  daemon with log_requests = false (informative): c=1 p50 {nolog['chat_c1']['p50_ms']:.3f} ms "
              f"(+{add * 1000:.0f} us, {add / bare_add:.2f}x the bare relay's); c=16 {nolog['chat_c16']['rps']:.0f} "
              f"req/s ({nolog['chat_c16']['rps'] / r['chat']['16']['bare']['rps']:.2f}x bare, CPU/request "
              f"{fmt(nolog['chat_c16'].get('cpu_us_per_req'), 0)} us)")
    oj = r["orjson"]
    print(f"orjson vs json, parsing a request body: small {oj['orjson_small_us']} vs {oj['json_small_us']} us, "
          f"64 KB {oj['orjson_64kb_us']} vs {oj['json_64kb_us']} us")
    print()
    print("targets")
    for v in r["verdicts"]:
        print(f"  {'PASS' if v['pass'] else 'MISS'}  {v['target']:<44} {v['value']!s:>8}  (goal {v['goal']})")
        print(f"        {v['detail']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells, one cold start, no event-loop comparison")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON summary to PATH")
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk exists")
    parser.add_argument("--no-loops", action="store_true", help="skip the uvloop vs asyncio comparison")
    parser.add_argument("--upstream", choices=("fast", "standin"), default="fast",
                        help="fast: benchmarks/fast_upstream.py (default; the targets were set against a fast "
                             "upstream); standin: the faithful hosted stand-in, ~10x slower")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, settings)")
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.perf_counter()
    try:
        results = measure(args)
    except KeyboardInterrupt:
        log("interrupted; child processes stopped")
        return 130
    results["verdicts"] = verdicts(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_report(results)
    print(f"\nrun took {results['elapsed_s']} s")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print("BENCHMARK_JSON " + orjson.dumps(results).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
