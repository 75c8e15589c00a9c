"""A real llama.cpp OpenAI-compatible HTTP server (via ``xllamacpp``) in a child process, for tests.

xllamacpp has no CLI: ``xllamacpp.Server(params)`` loads the model, binds, serves from native threads and
returns once it is listening; dropping the object stops it. It runs in a *subprocess* so that its
threads and memory never live in the pytest process, and so that a test can kill it.

Child: ``python -m tests.support.llama_server --model PATH [--port N] [--alias tiny-llama] [--host H]``
serves until SIGTERM/SIGINT (or until its parent dies) and exits 0.

Parent: :class:`LlamaServerProcess` starts that child, waits until ``GET /v1/models`` answers and
exposes ``base_url`` (``http://127.0.0.1:PORT/v1``) for OpenAI clients.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

if TYPE_CHECKING:  # the 100 MB native module is imported in the child only
    import xllamacpp

DEFAULT_ALIAS = "tiny-llama"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_N_CTX = 512
DEFAULT_N_PARALLEL = 2
DEFAULT_THREADS = 1  # the tiny model decodes in ~0.1 ms/token; more threads only contend with the tests
DEFAULT_HTTP_THREADS = 8  # each open stream holds one HTTP thread; leave room for concurrent clients
REPO_ROOT = Path(__file__).resolve().parents[2]
_LOG_TAIL_CHARS = 6000


class LlamaServerError(RuntimeError):
    """The llama server child failed to start (the message carries its log tail)."""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --------------------------------------------------------------------------------------------- child


def build_params(
    model: Path,
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    alias: str = DEFAULT_ALIAS,
    n_ctx: int = DEFAULT_N_CTX,
    n_parallel: int = DEFAULT_N_PARALLEL,
    threads: int = DEFAULT_THREADS,
    http_threads: int = DEFAULT_HTTP_THREADS,
    verbosity: int | None = None,
) -> xllamacpp.CommonParams:
    """Fill ``xllamacpp.CommonParams`` for a small CPU-only server. ``port=0`` lets the OS pick."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.hostnames = [host]  # a list of strings (not a single "hostname")
    params.port = port
    params.model_alias = {alias}  # a *set* of names, each accepted as "model" and listed by /v1/models
    params.n_ctx = n_ctx
    params.n_parallel = n_parallel
    params.kv_unified = True  # slots share the KV cache, so one request may use all of n_ctx
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.n_threads_http = http_threads
    params.n_gpu_layers = 0  # deterministic CPU run even on a machine with a GPU
    params.fit_params = False  # skip the device-memory fitting pass (it loads the model a second time)
    params.warmup = False  # nothing to warm up in a 240 KB model
    params.ui = False  # the web UI is of no use to tests
    if verbosity is not None:
        params.verbosity = verbosity
    return params


def _write_ready_file(path: Path, info: dict[str, Any]) -> None:
    # Atomic, so the parent never reads a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path)


def serve(params: xllamacpp.CommonParams, ready_file: Path | None = None) -> int:
    """Run the server until SIGTERM/SIGINT or until the parent process goes away; return an exit code."""
    import xllamacpp

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    parent = os.getppid()

    try:
        server = xllamacpp.Server(params)  # blocks until the model is loaded and the socket is bound
    except RuntimeError as exc:  # busy port, unreadable model, ...: the reason is in the log above
        print(f"llama_server: failed to start: {exc}", file=sys.stderr, flush=True)
        return 2
    address = str(server.listening_address)  # "http://HOST:PORT", with the real port when port=0
    port = int(address.rsplit(":", 1)[1])
    info = {"pid": os.getpid(), "address": address, "port": port, "base_url": address + "/v1"}
    if ready_file is not None:
        _write_ready_file(ready_file, info)
    print(f"llama_server: ready {json.dumps(info)}", flush=True)

    # Event.wait with a timeout keeps the main thread in Python, so signal handlers run promptly;
    # the ppid check stops an orphan when pytest was killed without a chance to stop us.
    while not stop.wait(0.5):
        if os.getppid() != parent:
            print("llama_server: parent went away, stopping", file=sys.stderr, flush=True)
            break
    del server  # the native destructor stops the HTTP server and joins its threads
    print("llama_server: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve a GGUF model with llama.cpp's OpenAI-compatible server."
    )
    parser.add_argument("--model", type=Path, required=True, help="path of the .gguf model")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 (default) picks a free one")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="model name served in /v1/models")
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX)
    parser.add_argument("--n-parallel", type=int, default=DEFAULT_N_PARALLEL)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--verbosity", type=int, default=None, help="llama.cpp log verbosity")
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="write {port, base_url, pid} here when up"
    )
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"llama_server: model not found: {args.model}", file=sys.stderr, flush=True)
        return 2
    params = build_params(
        args.model.resolve(),
        host=args.host,
        port=args.port,
        alias=args.alias,
        n_ctx=args.n_ctx,
        n_parallel=args.n_parallel,
        threads=args.threads,
        verbosity=args.verbosity,
    )
    return serve(params, args.ready_file)


# -------------------------------------------------------------------------------------------- parent


class LlamaServerProcess:
    """Run :func:`main` in a child process and wait until it serves ``/v1/models``.

    >>> with LlamaServerProcess(model_path) as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="unused")

    ``port=None`` lets the child bind port 0 and report the port the OS picked, which cannot race with
    other processes the way "find a free port, close it, hand it over" can. The child's stdout and stderr
    go to ``log_path`` (a file, not a pipe: a pipe nobody drains would block llama.cpp's logging).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        alias: str = DEFAULT_ALIAS,
        n_ctx: int = DEFAULT_N_CTX,
        n_parallel: int = DEFAULT_N_PARALLEL,
        threads: int = DEFAULT_THREADS,
        workdir: Path | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.model_path = Path(model_path).resolve()
        self.host = host
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.startup_seconds: float | None = None
        self._requested_port = port
        self._port: int | None = None
        self._workdir = Path(workdir) if workdir is not None else None
        self._own_workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    # ---- public state

    @property
    def port(self) -> int:
        if self._port is None:
            raise LlamaServerError("llama server is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT`` (llama.cpp's own endpoints: /health, /props, /tokenize, ...)."""
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what OpenAI clients take as ``base_url``."""
        return self.root_url + "/v1"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise LlamaServerError("llama server is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def command(self, ready_file: Path | None = None) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "tests.support.llama_server",
            "--model",
            str(self.model_path),
            "--port",
            str(self._requested_port or 0),
            "--host",
            self.host,
            "--alias",
            self.alias,
            "--n-ctx",
            str(self.n_ctx),
            "--n-parallel",
            str(self.n_parallel),
            "--threads",
            str(self.threads),
        ]
        if ready_file is not None:
            cmd += ["--ready-file", str(ready_file)]
        return cmd

    def read_log(self, tail: int | None = None) -> str:
        """The child's combined stdout/stderr so far (the last ``tail`` characters if given)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text if tail is None else text[-tail:]

    # ---- lifecycle

    def start(self) -> Self:
        if self._proc is not None:
            raise LlamaServerError("llama server already started")
        if not self.model_path.is_file():
            raise LlamaServerError(f"model file not found: {self.model_path}")
        if self._workdir is None:
            self._own_workdir = Path(tempfile.mkdtemp(prefix="llama-server-"))
        workdir = self._workdir or self._own_workdir
        assert workdir is not None
        workdir.mkdir(parents=True, exist_ok=True)
        ready_file = workdir / "ready.json"
        ready_file.unlink(missing_ok=True)
        self.log_path = workdir / "llama-server.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ)
        # The child runs `-m tests.support...`, so the repo root must be importable whatever the cwd.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        started = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(ready_file),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(ready_file, started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _fail(self, why: str) -> LlamaServerError:
        rc = self.returncode
        return LlamaServerError(
            f"llama server {why} (exit code {rc}); command: {' '.join(self.command())}\n"
            f"--- log tail ({self.log_path}) ---\n{self.read_log(_LOG_TAIL_CHARS)}"
        )

    def _wait_ready(self, ready_file: Path, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise self._fail("exited during startup")
            if self._port is None and ready_file.exists():
                self._port = int(json.loads(ready_file.read_text(encoding="utf-8"))["port"])
            if self._port is not None and self._models_ok():
                return
            if time.monotonic() > deadline:
                raise self._fail(f"did not answer GET /v1/models within {self.startup_timeout:.0f} s")
            time.sleep(0.05)

    def _models_ok(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
        try:
            conn.request("GET", "/v1/models")
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> int | None:
        """SIGTERM the child, SIGKILL it after ``stop_timeout`` s; return its exit code. Idempotent."""
        rc: int | None = None
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(self.stop_timeout)
            rc = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir is not None:
            shutil.rmtree(self._own_workdir, ignore_errors=True)
            self._own_workdir = None
            self.log_path = None
        return rc

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"<LlamaServerProcess {self.alias!r} {where} pid={self._proc.pid if self._proc else None}>"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
