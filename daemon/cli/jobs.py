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
    jobs = commands.add_parser("jobs", help="list the fine-tune jobs the companion watches, or add one by id")
    jobs.add_argument("--json", action="store_true")
    job_actions = jobs.add_subparsers(dest="action", metavar="ACTION")
    job_add = job_actions.add_parser("add", help="watch a fine-tune job created elsewhere")
    job_add.add_argument("id", metavar="ID", help="the hosted job id")
    job_add.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="the workspace whose key can read it")
    job_add.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs, action=None)
