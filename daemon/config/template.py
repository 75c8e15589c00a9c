"""The commented config.toml written on first run: every setting at its default, commented out.

Generated from the pydantic models in settings.py, so a new setting appears in it by itself; a
person discovers the settings by opening the file, and uncommenting a line changes one of them.
"""

from __future__ import annotations

import os
import typing
from typing import Any

import tomlkit
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .paths import Paths
from .settings import Settings

HEADER = """\
## llmtune-companion settings. Every setting is listed at its default, commented out: remove the
## leading "# " of a line (and of its [table] line) to change it. Saved edits apply at once while the
## daemon runs, except server.host, server.port and upstream.pool_size (`llmtune-companion restart`).
## Keys and local tokens are not here: they live in secrets.json (`llmtune-companion workspace add`).
## Reference: docs/settings.md
"""

# The name shown for a table of named entries (backends: one example table per backend type).
EXAMPLE_NAMES = {"workspaces": "myproject"}
EXAMPLE_BACKENDS = {"openai": "local", "bedrock": "aws", "echo": "echo2"}

# Values shown for settings without a default (unset, or required in their table).
EXAMPLES: dict[str, Any] = {
    "hosted.fallback": "local/qwen2.5-coder",
    "backends.*.url": "http://127.0.0.1:8080/v1",
    "backends.*.region": "us-east-1",
    "backends.aws.url": "https://bedrock-runtime.us-east-1.amazonaws.com",
    "backends.*.api_key_env": "LOCAL_API_KEY",
    "routes.match": "gpt-4*",
    "routes.backend": "local",
    "routes.model": "qwen2.5-coder",
    "routes.fallback": "echo",
    "workspaces.*.root": "~/code/myproject",
    "jobs.webhook_url": "http://127.0.0.1:9000/llmtune-events",
}

# One line each, shown above a setting (docs/settings.md says more).
DESCRIPTIONS = {
    "server.host": "listen address: loopback only (127.0.0.1, ::1, localhost)",
    "server.port": "listen port",
    "server.max_body_bytes": "largest request body accepted",
    "server.allowed_hosts": "extra Host names accepted besides loopback names",
    "server.allowed_origins": "browser Origins allowed to call the API (they still need a token)",
    "server.log_requests": "one log line per request",
    "upstream.connect_timeout": "seconds to connect to a backend",
    "upstream.first_byte_timeout": "seconds to wait for a backend's first byte (a local GPU may take minutes)",
    "upstream.read_timeout": "longest silence between two chunks, in seconds",
    "upstream.max_retries": "retries of a 429 (short Retry-After) or 5xx before any byte went to the client",
    "upstream.retry_max_wait": "longest Retry-After waited out; a longer one goes to the client",
    "upstream.backoff_base": "first retry delay in seconds, doubled each retry",
    "upstream.pool_size": "pooled upstream connections",
    "cache.models_ttl": "seconds a model list is fresh",
    "hosted.base_url": "hosted LLMTune API root (LLMTUNE_BASE_URL wins)",
    "hosted.enabled": "route unprefixed model ids to the hosted API",
    "hosted.fallback": "model id served when the hosted API is down, 5xx or 402",
    "backends.*.type": "openai (any OpenAI-compatible server), echo or bedrock",
    "backends.*.url": "the server's /v1 URL (for bedrock, an optional endpoint override)",
    "backends.*.region": "AWS region of a bedrock backend",
    "backends.*.api_key_env": "environment variable holding this backend's own key",
    "backends.*.models": "model ids to list when the server cannot list them",
    "routes.match": "glob on the model id; routes are tried in order, the first match wins",
    "routes.backend": "the backend that serves it",
    "routes.model": "the id sent to that backend (default: the same)",
    "routes.fallback": "model id tried when that backend fails",
    "workspaces.*.description": "a note",
    "workspaces.*.root": "the directory the tools are confined to",
    "workspaces.*.tools": "passthrough, gate or execute (gate and execute need root)",
    "workspaces.*.max_steps": "rounds of tool calls execute mode runs before answering",
    "tools.approval_timeout": "seconds a pending approval waits before it is refused",
    "jobs.poll_interval": "seconds before a fine-tune job's first status poll; doubled while nothing changes",
    "jobs.max_poll_interval": "longest wait between two polls of one job",
    "jobs.webhook_url": "where each job event is also POSTed",
    "llm_api.default_model": "the model /api/v1/llm uses when a request names none",
}


def _unwrap(annotation: Any) -> Any:
    """`Annotated[M, validators]` -> M."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _model_of(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """("model", M), ("dict", M) or ("list", M) when a field holds settings models; None for a value."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    origin, args = typing.get_origin(annotation), [_unwrap(arg) for arg in typing.get_args(annotation)]
    if origin is dict and args and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return "dict", args[1]
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "list", args[0]
    return None


def backend_examples() -> dict[str, tuple[str, type[BaseModel]]]:
    """Example table name -> (backend type, its settings model), for every type config.toml may name."""
    from ..adapters import BACKEND_TYPES, BackendSettings

    # A type that reads only the common keys (echo) needs no table of its own: openai's shows them.
    return {EXAMPLE_BACKENDS.get(kind, f"my{kind}"): (kind, backend.settings_model)
            for kind, backend in BACKEND_TYPES.items()
            if backend.configurable and (kind == "openai" or backend.settings_model is not BackendSettings)}


def _value(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None


def _toml(value: Any) -> str:
    """A value on one line, as it would follow `name = ` (a mapping as an inline table)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return str(table.as_string())
    return str(tomlkit.item(value).as_string())


def _table(lines: list[str], model: type[BaseModel], header: str, key: str,
           fixed: dict[str, Any] | None = None) -> None:
    """`# [header]` then `# name = default` for each value (`fixed` ones as given), then its sub-tables."""
    lines += ["", f"# {header}"]  # "## " lines stay comments when a person uncomments a table
    nested: list[tuple[str, str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        dotted = f"{key}.{name}"
        kind = _model_of(info.annotation)
        if kind is not None:
            nested.append((name, kind[0], kind[1]))
            continue
        description = DESCRIPTIONS.get(dotted)
        if description:
            lines.append(f"## {description}")
        value = (fixed or {}).get(name, _value(info))
        if value is None:
            example = EXAMPLES.get(f"{header.strip('[]')}.{name}", EXAMPLES.get(dotted, ""))
            lines.append(f"# {name} = {_toml(example)}    # unset by default; an example")
        else:
            lines.append(f"# {name} = {_toml(value)}")
    for name, _kind, sub in nested:
        _table(lines, sub, f"[{header.strip('[]')}.{name}]", f"{key}.{name}")


def render_template() -> str:
    lines = [HEADER.rstrip("\n")]
    for name, info in Settings.model_fields.items():
        kind = _model_of(info.annotation)
        assert kind is not None, f"Settings.{name} is not a table"
        shape, model = kind
        if shape == "model":
            _table(lines, model, f"[{name}]", name)
        elif name == "backends":
            for example, (backend_type, settings_model) in backend_examples().items():
                _table(lines, settings_model, f"[{name}.{example}]", f"{name}.*", fixed={"type": backend_type})
        elif shape == "dict":
            example = EXAMPLE_NAMES.get(name, "NAME")
            _table(lines, model, f"[{name}.{example}]", f"{name}.*")
        else:
            _table(lines, model, f"[[{name}]]", name)
    return "\n".join(lines) + "\n"


def write_template(paths: Paths) -> bool:
    """Write the template when there is no config.toml yet (never over one); True when written."""
    path = paths.config_file
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.template.tmp")
    tmp.write_text(render_template(), encoding="utf-8")
    try:
        # A link, not a rename: a config.toml made meanwhile (by a person, another command) wins.
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True
