"""The five local tools as OpenAI function definitions, and the normalisation of a model's arguments.

Models are loose with argument names (`file_path`, `cmd`, `old_string` ...) and types (`"2"` for 2,
`"true"` for true). `normalise_arguments` maps the aliases they use onto the canonical names and
refuses anything else with a `ToolArgumentError` whose message is written for the model to read and
correct its call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

READ_FILE: Final = "read_file"
WRITE_FILE: Final = "write_file"
LIST_DIRECTORY: Final = "list_directory"
RUN_TERMINAL: Final = "run_terminal"
SEARCH_REPLACE: Final = "search_replace"

TOOL_NAMES: Final[tuple[str, ...]] = (READ_FILE, WRITE_FILE, LIST_DIRECTORY, RUN_TERMINAL, SEARCH_REPLACE)
# Tools whose `path` argument names a file they change.
WRITING_TOOLS: Final = frozenset({WRITE_FILE, SEARCH_REPLACE})
PATH_TOOLS: Final = frozenset({READ_FILE, WRITE_FILE, LIST_DIRECTORY, SEARCH_REPLACE})

MAX_LIST_DEPTH: Final = 10


class ToolArgumentError(ValueError):
    """A tool call the model got wrong; the message tells the model how to call the tool instead."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a local tool, with canonical argument names (see `parse_call`)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    # The model's tool_call id, echoed in the `tool` message that carries the result.
    id: str | None = None

    @property
    def path(self) -> str | None:
        value = self.arguments.get("path")
        return value if isinstance(value, str) else None

    @property
    def command(self) -> str | None:
        value = self.arguments.get("command")
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": dict(self.arguments)}


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_PATH = {"type": "string", "description": "Path relative to the workspace root, e.g. src/main.py."}

TOOL_DEFINITIONS: Final[tuple[dict[str, Any], ...]] = (
    _function(
        READ_FILE,
        "Read a UTF-8 text file in the workspace and return its contents. Binary and very large "
        "files are refused.",
        {"path": _PATH},
        ["path"],
    ),
    _function(
        WRITE_FILE,
        "Create a file or overwrite it entirely with the given content. Parent directories are "
        "created. To change part of a file, prefer search_replace.",
        {"path": _PATH, "content": {"type": "string", "description": "The complete new file content."}},
        ["path", "content"],
    ),
    _function(
        LIST_DIRECTORY,
        "List a directory of the workspace. Directories end with '/'. The .git directory is skipped.",
        {
            "path": {"type": "string", "description": "Directory relative to the workspace root; "
                     "defaults to the root ('.')."},
            "depth": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_DEPTH,
                      "description": "How many levels to descend (1 = only the directory's entries)."},
        },
        [],
    ),
    _function(
        RUN_TERMINAL,
        "Run a shell command in the workspace root and return its combined output and exit code. "
        "There is no input (stdin is closed), a time limit, and background processes are stopped "
        "when the command ends.",
        {"command": {"type": "string", "description": "The shell command line, e.g. 'npm test'."}},
        ["command"],
    ),
    _function(
        SEARCH_REPLACE,
        "Replace an exact piece of text in a file. `search` must occur exactly once (include "
        "surrounding lines to make it unique) unless replace_all is true. Returns a unified diff.",
        {
            "path": _PATH,
            "search": {"type": "string", "description": "The exact text to find, whitespace included."},
            "replace": {"type": "string", "description": "The text to put in its place."},
            "replace_all": {"type": "boolean", "description": "Replace every occurrence (default false)."},
        },
        ["path", "search", "replace"],
    ),
)

# canonical name -> accepted spellings (the canonical one first).
_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "path": ("path", "file_path", "filepath", "file", "filename", "target_file"),
    "content": ("content", "contents", "text", "file_content"),
    "command": ("command", "cmd"),
    "search": ("search", "old", "old_string", "old_str", "find"),
    "replace": ("replace", "new", "new_string", "new_str"),
    "replace_all": ("replace_all", "all"),
    "depth": ("depth", "max_depth"),
}
# For list_directory the directory is also often called dir / directory.
_LIST_PATH_ALIASES: Final = ("path", "dir", "directory", "dir_path", "directory_path")

# tool -> (required, optional) canonical argument names.
_SIGNATURES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    READ_FILE: (("path",), ()),
    WRITE_FILE: (("path", "content"), ()),
    LIST_DIRECTORY: ((), ("path", "depth")),
    RUN_TERMINAL: (("command",), ()),
    SEARCH_REPLACE: (("path", "search", "replace"), ("replace_all",)),
}


def tool_definitions(names: tuple[str, ...] | list[str] | None = None) -> list[dict[str, Any]]:
    """The OpenAI `tools` entries, all five or the named ones, as fresh (mutable) copies."""
    wanted = TOOL_NAMES if names is None else tuple(names)
    unknown = [name for name in wanted if name not in TOOL_NAMES]
    if unknown:
        raise ValueError(f"unknown tools {unknown} (known: {list(TOOL_NAMES)})")
    result: list[dict[str, Any]] = orjson.loads(orjson.dumps([d for d in TOOL_DEFINITIONS
                                                               if d["function"]["name"] in wanted]))
    return result


def _signature_text(tool: str) -> str:
    required, optional = _SIGNATURES[tool]
    parts = [*required, *(f"{name}?" for name in optional)]
    return f"{tool}({', '.join(parts)})"


def _decode(tool: str, arguments: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, str | bytes):
        text = arguments.strip() if isinstance(arguments, str) else arguments.strip().decode("utf-8", "replace")
        if not text:
            return {}
        try:
            decoded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ToolArgumentError(
                f"{tool}: the arguments are not valid JSON ({exc}); send a JSON object like "
                f"{_signature_text(tool)}"
            ) from exc
        if not isinstance(decoded, dict):
            raise ToolArgumentError(f"{tool}: the arguments must be a JSON object, got {type(decoded).__name__}")
        return decoded
    if not isinstance(arguments, Mapping):
        raise ToolArgumentError(f"{tool}: the arguments must be a JSON object")
    return dict(arguments)


def _as_bool(tool: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ToolArgumentError(f"{tool}: {name} must be true or false, got {value!r}")


def _as_depth(tool: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ToolArgumentError(f"{tool}: depth must be a whole number from 1 to {MAX_LIST_DEPTH}")
    try:
        depth = int(value) if isinstance(value, int | str) else int(float(value))
    except (TypeError, ValueError) as exc:
        raise ToolArgumentError(f"{tool}: depth must be a whole number from 1 to {MAX_LIST_DEPTH}, "
                                f"got {value!r}") from exc
    if not 1 <= depth <= MAX_LIST_DEPTH:
        raise ToolArgumentError(f"{tool}: depth must be from 1 to {MAX_LIST_DEPTH}, got {depth}")
    return depth


def normalise_arguments(tool: str, arguments: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
    """Canonical arguments for `tool`, from a dict or the JSON string OpenAI tool_calls carry.

    Raises `ToolArgumentError` for an unknown tool, unknown or missing arguments, two spellings of
    one argument with different values, or a value of the wrong type.
    """
    if tool not in _SIGNATURES:
        raise ToolArgumentError(f"unknown tool {tool!r}; the available tools are {', '.join(TOOL_NAMES)}")
    raw = _decode(tool, arguments)
    required, optional = _SIGNATURES[tool]
    accepted = (*required, *optional)
    lookup: dict[str, str] = {}
    for canonical in accepted:
        if (tool, canonical) == (LIST_DIRECTORY, "path"):
            spellings = _LIST_PATH_ALIASES + _ALIASES["path"][1:]
        else:
            spellings = _ALIASES[canonical]
        for spelling in spellings:
            lookup[spelling] = canonical
    result: dict[str, Any] = {}
    seen_as: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        found = lookup.get(key) or lookup.get(key.strip().lower().replace("-", "_"))
        if found is None:
            unknown.append(key)
            continue
        canonical = found
        if canonical in result and result[canonical] != value:
            raise ToolArgumentError(
                f"{tool}: both {seen_as[canonical]!r} and {key!r} were given with different values; "
                f"send only {canonical!r}"
            )
        result[canonical] = value
        seen_as[canonical] = key
    if unknown:
        raise ToolArgumentError(
            f"{tool}: unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the signature is {_signature_text(tool)}"
        )
    missing = [name for name in required if name not in result or result[name] is None]
    if missing:
        raise ToolArgumentError(
            f"{tool}: missing argument{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
            f"the signature is {_signature_text(tool)}"
        )
    if isinstance(result.get("content"), dict | list):
        # Models sometimes send a JSON file's content as an object; write it as the JSON they meant.
        result["content"] = orjson.dumps(result["content"], option=orjson.OPT_INDENT_2).decode() + "\n"
    for name in ("path", "content", "command", "search", "replace"):
        if name in result and result[name] is not None and not isinstance(result[name], str):
            if name in ("path", "command") or not isinstance(result[name], int | float):
                raise ToolArgumentError(f"{tool}: {name} must be a string, got {type(result[name]).__name__}")
            result[name] = str(result[name])
    if tool == LIST_DIRECTORY:
        if result.get("path") in (None, ""):
            result["path"] = "."
        if result.get("depth") is not None:
            result["depth"] = _as_depth(tool, result["depth"])
        else:
            result.pop("depth", None)
    if tool == SEARCH_REPLACE:
        result["replace_all"] = _as_bool(tool, "replace_all", result.get("replace_all", False))
    return result


def parse_call(name: str, arguments: Mapping[str, Any] | str | bytes | None, id: str | None = None) -> ToolCall:
    """A `ToolCall` with normalised arguments; raises `ToolArgumentError`."""
    return ToolCall(name=name, arguments=normalise_arguments(name, arguments), id=id)


def parse_openai_tool_call(tool_call: Mapping[str, Any]) -> ToolCall:
    """From an OpenAI `tool_calls[]` entry: `{"id", "type": "function", "function": {"name", "arguments"}}`."""
    function = tool_call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ToolArgumentError("the tool call has no function name")
    call_id = tool_call.get("id")
    return parse_call(function["name"], function.get("arguments"), call_id if isinstance(call_id, str) else None)


def coerce_call(call: ToolCall | Mapping[str, Any]) -> ToolCall:
    """Accept a `ToolCall` (re-normalised: idempotent), an OpenAI tool_call, or `{"name", "arguments"}`."""
    if isinstance(call, ToolCall):
        return parse_call(call.name, call.arguments, call.id)
    if "function" in call:
        return parse_openai_tool_call(call)
    name = call.get("name")
    if not isinstance(name, str):
        raise ToolArgumentError("the tool call has no name")
    call_id = call.get("id")
    return parse_call(name, call.get("arguments"), call_id if isinstance(call_id, str) else None)
