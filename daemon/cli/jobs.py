"""`jobs`: the fine-tune jobs the companion watches."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from ..config.paths import Paths
from ..config.settings import DEFAULT_WORKSPACE
from .client import call_daemon, control, daemon_url
from .common import CLIError, load_settings


def _format_job(job: dict[str, Any]) -> str:
    model = job.get("fine_tuned_model") or ""
    if model and job.get("deployed"):
        model += " (deployed)"
    error = f"  last error: {job['error']}" if job.get("error") else ""
    return f"{job['id']}  {job.get('workspace')}  {job.get('status')}  {model}{error}".rstrip()


def _remove(args: argparse.Namespace, paths: Paths, url: str | None) -> int:
    """Stop watching a job: through the daemon (which owns jobs.json while it runs), or in jobs.json."""
    import urllib.parse

    from ..upstream.jobs import jobs_file, load_jobs, save_jobs
    from .client import DaemonError

    missing = CLIError(f"no tracked fine-tune job {args.id!r} (see `llmtune-companion jobs`)", 1)
    if url is not None:
        path = "/companion/v1/jobs/" + urllib.parse.quote(args.id, safe="")
        try:
            call_daemon(url, path, control(paths)[1], method="DELETE")
        except DaemonError as exc:
            if exc.status == 404:
                raise missing from None
            raise
    else:
        jobs = load_jobs(jobs_file(paths))
        if jobs.pop(args.id, None) is None:
            raise missing
        save_jobs(jobs_file(paths), jobs)
    print(f"no longer watching {args.id}")
    return 0


def cmd_jobs(args: argparse.Namespace, paths: Paths) -> int:
    from ..upstream.jobs import TrackedJob, check_job_id, jobs_file, load_jobs, save_jobs

    url = daemon_url(paths)
    if args.action == "add":
        try:
            job_id = check_job_id(args.id)
        except ValueError as exc:
            raise CLIError(str(exc), 2) from None
        if url is not None:
            body = {"id": job_id, "workspace": args.workspace}
            job = call_daemon(url, "/companion/v1/jobs", control(paths)[1], method="POST", json=body)["job"]
        else:
            if args.workspace not in load_settings(paths).workspaces:
                raise CLIError(f"no workspace named {args.workspace!r}")
            # The daemon polls it from its next start.
            jobs = load_jobs(jobs_file(paths))
            tracked = jobs.setdefault(job_id, TrackedJob(job_id, args.workspace))
            paths.ensure()
            save_jobs(jobs_file(paths), jobs)
            job = tracked.to_dict()
        print(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode() if args.json else f"tracking {_format_job(job)}")
        return 0
    if args.action == "remove":
        return _remove(args, paths, url)
    if url is not None:
        listed = call_daemon(url, "/companion/v1/jobs", control(paths)[1])["jobs"]
    else:
        listed = [job.to_dict() for job in load_jobs(jobs_file(paths)).values()]
    if args.json:
        print(orjson.dumps(listed, option=orjson.OPT_INDENT_2).decode())
    elif not listed:
        print("no fine-tune jobs tracked")
    else:
        for job in listed:
            print(_format_job(job))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = commands.add_parser("jobs", help="list the fine-tune jobs the companion watches; add or remove one",
                               description="Without an action: list the watched fine-tune jobs. "
                                           "`jobs add ID` watches one, `jobs remove ID` stops watching it.")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    job_actions = jobs.add_subparsers(dest="action", metavar="[add | remove]", title="actions (optional)")
    job_add = job_actions.add_parser("add", help="watch a fine-tune job created elsewhere")
    job_add.add_argument("id", metavar="ID", help="the hosted job id (ft_...)")
    job_add.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="the workspace whose key can read it")
    job_add.add_argument("--json", action="store_true", help="print the tracked job as JSON")
    job_remove = job_actions.add_parser("remove", help="stop watching a job (e.g. a mistyped id)")
    job_remove.add_argument("id", metavar="ID", help="the job id, as `llmtune-companion jobs` lists it")
    jobs.set_defaults(func=cmd_jobs, action=None)
