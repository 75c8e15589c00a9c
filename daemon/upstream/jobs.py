"""Fine-tune jobs created (or named) through the companion, watched until they finish and deploy.

Each tracked job is polled with `GET /v1/fine-tune/{id}` on the hosted API, with the key of the
workspace that created it, at `jobs.poll_interval` seconds, doubling while nothing changes up to
`jobs.max_poll_interval`. A status change becomes one of the hosted webhook events, published on
the control event stream (`GET /companion/v1/events`) and, when `jobs.webhook_url` is set, POSTed
there as `{"event", "data", "timestamp"}`:

- `training.started`   the job reports `running` (or `training`, `in_progress`)
- `training.completed` the job reports `completed` (or `succeeded`, `deployed`)
- `training.failed`    the job reports `failed` (or `cancelled`, `error`); `data.error` says why
- `model.deployed`     the job's `fine_tuned_model` is deployed: the job says so (`deployed_model`,
                       `deployed: true`, status `deployed`) or the workspace's model list has it.
                       The workspace's model list is refreshed, so `GET /v1/models` shows it.

A completed job is watched for its deployment for DEPLOY_WATCH_SECONDS. The jobs are kept in
`<settings dir>/jobs.json` (mode 0600), so watching resumes after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from ..adapters import BackendRequest, BackendUnavailable, UpstreamBroken
from ..config.paths import Paths, write_private
from ..config.settings import HOSTED_BACKEND, JobsSettings, Workspace

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger(__name__)

JOBS_FILE = "jobs.json"
TRAINING_STARTED = "training.started"
TRAINING_COMPLETED = "training.completed"
TRAINING_FAILED = "training.failed"
MODEL_DEPLOYED = "model.deployed"
EVENT_TYPES = (TRAINING_STARTED, TRAINING_COMPLETED, TRAINING_FAILED, MODEL_DEPLOYED)

RUNNING_STATUSES = frozenset({"running", "training", "in_progress"})
COMPLETED_STATUSES = frozenset({"completed", "succeeded", "deployed"})
FAILED_STATUSES = frozenset({"failed", "cancelled", "canceled", "error"})
NOT_FOUND = "not_found"  # the hosted API answered 404: nothing more to watch
# How long a completed job is watched for the deployment of its model.
DEPLOY_WATCH_SECONDS = 7 * 24 * 3600.0
WEBHOOK_TIMEOUT = 10.0
MAX_JOB_BODY = 1024 * 1024
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def jobs_file(paths: Paths) -> Path:
    return paths.root / JOBS_FILE


@dataclass(slots=True)
class TrackedJob:
    id: str
    workspace: str
    status: str = "unknown"
    fine_tuned_model: str | None = None
    deployed: bool = False
    created_at: float = field(default_factory=time.time)  # when the companion started tracking it
    updated_at: float | None = None  # when its status last changed
    checked_at: float | None = None  # the last poll
    completed_at: float | None = None
    error: str | None = None  # why the last poll failed, if it did
    failure: Any = None  # the job's own error object once it failed

    @property
    def watching(self) -> bool:
        if self.status in FAILED_STATUSES or self.status == NOT_FOUND:
            return False
        if self.status in COMPLETED_STATUSES:
            if self.deployed or not self.fine_tuned_model:
                return False
            return self.completed_at is None or time.time() - self.completed_at < DEPLOY_WATCH_SECONDS
        return True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["watching"] = self.watching
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackedJob:
        known = {f.name for f in fields(cls)}
        job = cls(**{key: value for key, value in data.items() if key in known})
        if not isinstance(job.id, str) or not isinstance(job.workspace, str):
            raise ValueError("a job needs a string id and workspace")
        return job


def load_jobs(path: Path) -> dict[str, TrackedJob]:
    """jobs.json's jobs; an unreadable file is reported and treated as empty."""
    try:
        data = orjson.loads(path.read_bytes())
        items = data["jobs"]
        if not isinstance(items, list):
            raise TypeError("'jobs' is not a list")
        jobs = [TrackedJob.from_dict(item) for item in items]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s)", path.name, exc)
        return {}
    return {job.id: job for job in jobs}


def save_jobs(path: Path, jobs: dict[str, TrackedJob]) -> None:
    items = [asdict(job) for job in jobs.values()]
    write_private(path, orjson.dumps({"jobs": items}, option=orjson.OPT_INDENT_2))


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.match(job_id):
        raise ValueError("a job id is 1-128 letters, digits, '_', '.', ':' or '-'")
    return job_id


def webhook_body(event: dict[str, Any]) -> bytes:
    """`{"event": "training.completed", "data": {...}, "timestamp": "2026-01-01T00:00:00Z"}`."""
    data = {key: value for key, value in event.items() if key not in ("type", "time")}
    when = datetime.datetime.fromtimestamp(float(event.get("time", time.time())), datetime.UTC)
    return orjson.dumps({"event": event["type"], "data": data,
                         "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ")}, default=str)


class JobTracker:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.path = jobs_file(runtime.paths)
        self.jobs = load_jobs(self.path)
        self._due: dict[str, float] = {}  # monotonic time of each job's next poll
        self._interval: dict[str, float] = {}  # each job's current wait between polls
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._webhooks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
        self._sender: asyncio.Task[None] | None = None

    @property
    def settings(self) -> JobsSettings:
        return self.runtime.config.settings.jobs

    # -- the API the handlers use ---------------------------------------------------------------

    def list(self, workspace: str | None = None) -> list[dict[str, Any]]:
        return [job.to_dict() for job in self.jobs.values() if workspace is None or job.workspace == workspace]

    def track(self, job_id: str, workspace: str, job: dict[str, Any] | None = None) -> TrackedJob:
        """Watch a job; `job` is the hosted API's answer that created it (its status is not an event)."""
        tracked = self.jobs.get(job_id)
        if tracked is None:
            tracked = self.jobs[job_id] = TrackedJob(job_id, workspace)
        if job is not None:
            self._take_fields(tracked, job)
            if isinstance(job.get("status"), str):
                tracked.status = job["status"].lower()
                tracked.updated_at = time.time()
        self._save()
        # Named by id: look at once; just created: its status is known, look after one interval.
        self._schedule(tracked.id, reset=True, now=job is None)
        return tracked

    def forget(self, job_id: str) -> TrackedJob | None:
        """Stop watching a job (a mistyped id, a job no longer wanted); None when it was not tracked."""
        tracked = self.jobs.pop(job_id, None)
        if tracked is not None:
            self._due.pop(job_id, None)
            self._interval.pop(job_id, None)
            self._save()
            self._wake.set()
        return tracked

    async def observe(self, job_id: str, job: dict[str, Any]) -> None:
        """A client fetched a tracked job itself: the same transitions as a poll."""
        tracked = self.jobs.get(job_id)
        workspace = self.runtime.config.workspaces.get(tracked.workspace) if tracked else None
        if tracked is None or workspace is None:
            return
        if await self._apply(tracked, job, workspace):
            self._save()
            self._schedule(job_id, reset=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._sender = loop.create_task(self._send_webhooks())

    async def aclose(self) -> None:
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    # -- polling --------------------------------------------------------------------------------

    def _schedule(self, job_id: str, *, reset: bool = False, now: bool = False) -> None:
        first = self.settings.poll_interval
        if reset or job_id not in self._interval:
            interval = first
        else:
            interval = min(self._interval[job_id] * 2, self.settings.max_poll_interval)
        self._interval[job_id] = interval
        self._due[job_id] = time.monotonic() + (0.0 if now else interval)
        self._wake.set()

    async def _run(self) -> None:
        for job in self.jobs.values():
            if job.watching and job.id not in self._due:
                self._schedule(job.id, now=True)  # after a restart: look at once
        while True:
            self._wake.clear()
            now = time.monotonic()
            for job in list(self.jobs.values()):
                if job.watching and self._due.get(job.id, now) <= now:
                    try:
                        changed = await self._poll(job)
                    except Exception:
                        log.exception("polling fine-tune job %s failed", job.id)
                        changed = False
                    self._schedule(job.id, reset=changed)
            waits = [self._due[job.id] for job in self.jobs.values() if job.watching and job.id in self._due]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wake-up,
            # and then aclose() would wait on a loop that never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _poll(self, job: TrackedJob) -> bool:
        """Ask the hosted API for one job; True when something changed."""
        runtime = self.runtime
        workspace = runtime.config.workspaces.get(job.workspace)
        backend = runtime.backends.get(HOSTED_BACKEND)
        job.checked_at = time.time()
        changed = False
        if workspace is None or backend is None or not workspace.api_key:
            job.error = (f"workspace {job.workspace!r} is gone" if workspace is None else
                         "the hosted backend is disabled" if backend is None else
                         f"workspace {job.workspace!r} has no LLMTune key")
        else:
            path = "/v1/fine-tune/" + urllib.parse.quote(job.id, safe="")
            request = BackendRequest("platform", api_key=workspace.api_key, path=path, method="GET")
            try:
                response = await backend.handle(request)
                try:
                    body = await response.read(MAX_JOB_BODY)
                finally:
                    await response.aclose()
                if response.status == 200:
                    parsed = orjson.loads(body)
                    if not isinstance(parsed, dict):
                        raise ValueError("the job is not a JSON object")
                    job.error = None
                    changed = await self._apply(job, parsed, workspace)
                elif response.status == 404:
                    job.status, job.error, changed = NOT_FOUND, "the hosted API does not know this job", True
                else:
                    job.error = f"the hosted API answered HTTP {response.status}"
            except (BackendUnavailable, UpstreamBroken, ValueError) as exc:
                job.error = str(exc) or type(exc).__name__
        self._save()
        return changed

    def _take_fields(self, job: TrackedJob, data: dict[str, Any]) -> bool:
        model = data.get("fine_tuned_model") or data.get("fine_tuned_model_id")
        if isinstance(model, str) and model and model != job.fine_tuned_model:
            job.fine_tuned_model = model
            return True
        return False

    async def _apply(self, job: TrackedJob, data: dict[str, Any], workspace: Workspace) -> bool:
        """Take the hosted job's state; publish an event per transition. True when something changed."""
        changed = self._take_fields(job, data)
        status = data.get("status")
        status = status.lower() if isinstance(status, str) and status else job.status
        deployed_model = data.get("deployed_model")
        says_deployed = status == "deployed" or data.get("deployed") is True or isinstance(deployed_model, str)
        if isinstance(deployed_model, str) and deployed_model:
            job.fine_tuned_model = deployed_model
        events: list[dict[str, Any]] = []
        if status != job.status:
            previous = job.status
            job.status, job.updated_at, changed = status, time.time(), True
            base = {"job_id": job.id, "workspace": job.workspace, "status": status, "previous_status": previous,
                    "job": data}
            if status in RUNNING_STATUSES:
                events.append({"type": TRAINING_STARTED, **base})
            elif status in COMPLETED_STATUSES and previous not in COMPLETED_STATUSES:
                job.completed_at = time.time()
                events.append({"type": TRAINING_COMPLETED, **base, "model": job.fine_tuned_model})
            elif status in FAILED_STATUSES:
                job.failure = data.get("error")
                events.append({"type": TRAINING_FAILED, **base, "error": data.get("error")})
        if job.status in COMPLETED_STATUSES and job.fine_tuned_model and not job.deployed:
            deployed = says_deployed or await self._model_listed(job.fine_tuned_model, workspace)
            if deployed and not job.deployed:  # a poll and a client's fetch may both have looked
                job.deployed, changed = True, True
                if says_deployed:
                    await self._refresh_models(workspace)
                events.append({"type": MODEL_DEPLOYED, "job_id": job.id, "workspace": job.workspace,
                               "model": job.fine_tuned_model})
        for event in events:
            self._publish(event)
        return changed

    async def _model_listed(self, model: str, workspace: Workspace) -> bool:
        listed = await self._refresh_models(workspace)
        return model in listed

    async def _refresh_models(self, workspace: Workspace) -> set[str]:
        """Fetch the workspace's hosted model list again (so /v1/models shows a new model at once)."""
        backend = self.runtime.backends.get(HOSTED_BACKEND)
        if backend is None:
            return set()
        listed = await self.runtime.backend_models(backend, workspace, refresh=True)
        return {m["id"] for m in listed.models} if listed is not None and not listed.stale else set()

    # -- events ---------------------------------------------------------------------------------

    def _publish(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        log.info("fine-tune job %s: %s", event.get("job_id"), event["type"])
        self.runtime.approvals.publish(event)
        if self.settings.webhook_url:
            try:
                self._webhooks.put_nowait(webhook_body(event))
            except asyncio.QueueFull:
                log.warning("webhook queue full; dropping a %s event", event["type"])

    async def _send_webhooks(self) -> None:
        """One sender, so the webhook sees the events in order."""
        while True:
            body = await self._webhooks.get()
            url = self.settings.webhook_url
            if not url:
                continue
            try:
                async with self.runtime.session.post(
                    url, data=body, headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT), allow_redirects=False,
                ) as response:
                    await response.read()
                    if response.status >= 400:
                        log.warning("job webhook answered HTTP %d", response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("cannot deliver a job event to the webhook: %s", type(exc).__name__)

    def _save(self) -> None:
        try:
            save_jobs(self.path, self.jobs)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path.name, exc)
