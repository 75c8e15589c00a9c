"""The dashboard's login: one-time codes exchanged for a session cookie a foreign page cannot ride.

`POST /companion/v1/dashboard/link` (control token) returns a URL with a code that works once and
only for CODE_TTL seconds. `/dashboard/login?code=` trades it for an HttpOnly, SameSite=Strict cookie.
The cookie stands in for the control token on /companion/ paths (never on /v1: it is no workspace
token). Cookies are not kept apart by port, so another local site is "same-site": the guard still
refuses its Origin, `Sec-Fetch-Site` must say same-origin, and a state change needs both a same-origin
`Origin` and the `X-Companion-CSRF` header, which no form and no simple cross-origin request can send.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..appkeys import DASHBOARD_AUTH, VIA_SESSION
from ..errors import CompanionError

COOKIE_NAME = "companion_dashboard"
CSRF_HEADER = "X-Companion-CSRF"
CODE_TTL = 60.0
SESSION_TTL = 12 * 3600.0
MAX_CODES = 32
MAX_SESSIONS = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _digest(secret: str) -> str:
    # Only digests are kept: a dict lookup on them leaks nothing useful about a secret through timing.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class DashboardAuth:
    """Login codes and sessions, in memory (a restart logs the page out, which is fine for a local tool)."""

    def __init__(self, *, code_ttl: float = CODE_TTL, session_ttl: float = SESSION_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.code_ttl = code_ttl
        self.session_ttl = session_ttl
        self.clock = clock
        self._codes: dict[str, float] = {}
        self._sessions: dict[str, float] = {}

    @staticmethod
    def _prune(table: dict[str, float], now: float, limit: int) -> None:
        for key in [key for key, expires in table.items() if expires <= now]:
            del table[key]
        while len(table) >= limit:  # the oldest first (insertion order)
            del table[next(iter(table))]

    def issue_code(self) -> str:
        now = self.clock()
        self._prune(self._codes, now, MAX_CODES)
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = now + self.code_ttl
        return code

    def redeem(self, code: str) -> str | None:
        """A new session id for a valid code (which is spent); None when unknown, used or expired."""
        expires = self._codes.pop(_digest(code), None)
        now = self.clock()
        if expires is None or expires <= now:
            return None
        self._prune(self._sessions, now, MAX_SESSIONS)
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = now + self.session_ttl
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        expires = self._sessions.get(_digest(session))
        if expires is None:
            return False
        if expires <= self.clock():
            self._sessions.pop(_digest(session), None)
            return False
        return True

    def end(self, session: str | None) -> None:
        if session:
            self._sessions.pop(_digest(session), None)


def has_session(request: web.Request) -> bool:
    auth = request.app.get(DASHBOARD_AUTH)
    return auth is not None and auth.valid(request.cookies.get(COOKIE_NAME))


def same_origin(origin: str | None, host: str | None) -> bool:
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme == "http" and parts.netloc == host.lower()


def check_session(request: web.Request) -> None:
    """Let a cookie-carrying request without a token through the guard, or raise why not."""
    if not has_session(request):
        raise CompanionError(401, "the dashboard session has expired or is unknown: open a new link with "
                                  "`llmtune-companion dashboard`", "invalid_session")
    check_browser_context(request)
    request[VIA_SESSION] = True


def check_browser_context(request: web.Request) -> None:
    """Refuse what a page of another origin could make a browser send with the cookie."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise CompanionError(403, "the dashboard session only works from the dashboard's own pages",
                             "cross_site_refused")
    if request.method not in SAFE_METHODS:
        if not same_origin(request.headers.get("Origin"), request.headers.get("Host")):
            raise CompanionError(403, "a change through the dashboard session needs a same-origin Origin header",
                                 "csrf_refused")
        if request.headers.get(CSRF_HEADER) != "1":
            raise CompanionError(403, f"a change through the dashboard session needs the {CSRF_HEADER}: 1 header",
                                 "csrf_refused")


def require_token(request: web.Request) -> None:
    """For control routes the session must not reach (minting login links)."""
    if request.get(VIA_SESSION):
        raise CompanionError(403, "this needs the control token, not the dashboard session", "token_required")


def session_cookie(response: web.StreamResponse, session: str, ttl: float) -> None:
    response.set_cookie(COOKIE_NAME, session, max_age=int(ttl), path="/", httponly=True, samesite="Strict")


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/")
