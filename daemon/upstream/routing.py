"""Which backend serves a model id.

In order: `echo` is the built-in backend; `<backend>/<id>` goes to that configured backend as
`<id>`; config routes (globs, first match wins) come next; everything else goes to the hosted API.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..config.settings import ECHO_BACKEND, HOSTED_BACKEND, Settings


@dataclass(frozen=True, slots=True)
class Route:
    backend: str
    model: str  # the id the backend is sent
    fallback: str | None = None  # a model id tried when the backend fails
    prefixed: bool = False  # the client named the backend (`local/x`), so the model should be listed there


class Router:
    def __init__(self, settings: Settings, backends: Collection[str]) -> None:
        self._backends = set(backends)
        self._routes = settings.routes
        self._hosted_fallback = settings.hosted.fallback

    def resolve(self, model: str) -> Route:
        if model == ECHO_BACKEND:
            return Route(ECHO_BACKEND, model)
        prefix, slash, rest = model.partition("/")
        if slash and rest and prefix in self._backends and prefix != HOSTED_BACKEND:
            return Route(prefix, rest, prefixed=True)
        for rule in self._routes:
            if fnmatchcase(model, rule.match):
                fallback = rule.fallback
                if fallback is None and rule.backend == HOSTED_BACKEND:
                    fallback = self._hosted_fallback
                return Route(rule.backend, rule.model or model, fallback)
        return Route(HOSTED_BACKEND, model, self._hosted_fallback)

    def public_id(self, backend: str, model_id: str) -> str:
        """The id a client uses for a model a backend lists."""
        if backend in (HOSTED_BACKEND, ECHO_BACKEND):
            return model_id
        return f"{backend}/{model_id}"
