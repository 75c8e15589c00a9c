"""Which backend serves a model id.

In order: `echo` is the built-in backend; `<backend>/<id>` goes to that configured backend as
`<id>`; config routes (globs, first match wins) come next; everything else goes to the hosted API.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..config.settings import DEFAULT_WORKSPACE, ECHO_BACKEND, ENV_API_KEY, ENV_LOCAL_URL, HOSTED_BACKEND, Settings

# Names people give local servers: `local/x` with no such backend is a setup mistake, not a hosted id
# (hosted ids have slashes too, `meta-llama/...`, so only these prefixes are taken to name a backend).
LOCAL_BACKEND_NAMES = frozenset({"local", "ollama", "vllm", "lmstudio", "llamacpp", "llama.cpp", "bedrock"})


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
        if slash and rest and prefix in LOCAL_BACKEND_NAMES:
            return Route(prefix, rest, prefixed=True)  # not configured: forward() says so, naming the fix
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

    def suggestion(self, model: str) -> str | None:
        """A configured name close to a mistyped id (`ehco` -> `echo`), if any."""
        names = [ECHO_BACKEND, *(f"{name}/" for name in self._backends if name not in (ECHO_BACKEND, HOSTED_BACKEND))]
        close = difflib.get_close_matches(model, names, n=1, cutoff=0.75)
        if not close and "/" in model:
            prefix, _, rest = model.partition("/")
            near = difflib.get_close_matches(prefix + "/", names, n=1, cutoff=0.75)
            close = [near[0] + rest] if near else []
        return close[0] if close else None

    def sent_to_hosted(self, model: str) -> str:
        """Why an id went to the hosted API, and a likely meant one: added to errors about that request."""
        meant = self.suggestion(model)
        hint = f"; did you mean {meant!r}?" if meant else "; `llmtune-companion models` lists the ids you can use"
        return f"{model!r} is not served by a configured backend or route, so it went to the hosted LLMTune API{hint}"


def not_configured_message(model: str, backend: str, configured: Collection[str]) -> str:
    """The answer for `local/x` when no backend `local` is set up: what is missing and how to add it."""
    how = (f"set {ENV_LOCAL_URL}=http://127.0.0.1:8080/v1 or add [backends.local] with a url to config.toml"
           if backend == "local" else f"add [backends.{backend}] to config.toml")
    return (f"model {model!r} names the backend {backend!r}, which is not configured: {how} "
            f"(configured: {', '.join(sorted(configured)) or 'none'})")


def missing_key_message(workspace: str) -> str:
    """A hosted model asked for by a workspace without a key; the variable only applies to `default`."""
    fix = f"run `llmtune-companion workspace add {workspace} --key-stdin`"
    if workspace == DEFAULT_WORKSPACE:
        fix += f" or set {ENV_API_KEY}"
    return f"workspace {workspace!r} has no LLMTune key: {fix}"
