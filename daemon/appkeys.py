"""Every typed key the application and its requests carry, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .config.settings import Workspace  # noqa: F401
    from .dashboard.auth import DashboardAuth  # noqa: F401
    from .runtime import Runtime  # noqa: F401 (named in the string keys below)
    from .upstream.jobs import JobTracker  # noqa: F401

RUNTIME = web.AppKey["Runtime"]("runtime")
JOBS = web.AppKey["JobTracker"]("jobs")
CONTROL_TOKEN = web.AppKey[str]("control_token")
# Set by `serve`: stops the daemon gracefully (what SIGTERM does); absent when the app runs elsewhere (tests).
SHUTDOWN = web.AppKey[Callable[[], None]]("shutdown")
WORKSPACE = web.RequestKey["Workspace"]("workspace")
DASHBOARD_AUTH = web.AppKey["DashboardAuth"]("dashboard_auth")
# Set on a control request authenticated by the dashboard's session cookie (not the control token).
VIA_SESSION = web.RequestKey[bool]("via_session")
CORS_ORIGIN = web.RequestKey[str]("cors_origin")  # an allowed foreign Origin, answered with CORS headers
