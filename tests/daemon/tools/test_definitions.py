from __future__ import annotations

import orjson
import pytest
from llmtune_companion.tools import (
    TOOL_NAMES,
    ToolArgumentError,
    ToolCall,
    coerce_call,
    normalise_arguments,
    parse_openai_tool_call,
    tool_definitions,
)


def test_definitions_are_openai_functions_with_json_schema() -> None:
    definitions = tool_definitions()
    assert [d["function"]["name"] for d in definitions] == list(TOOL_NAMES)
    for definition in definitions:
        assert definition["type"] == "function"
        parameters = definition["function"]["parameters"]
        assert parameters["type"] == "object"
        assert parameters["additionalProperties"] is False
        assert set(parameters["required"]) <= set(parameters["properties"])
        assert definition["function"]["description"]
    by_name = {d["function"]["name"]: d["function"]["parameters"] for d in definitions}
    assert by_name["search_replace"]["required"] == ["path", "search", "replace"]
    assert by_name["search_replace"]["properties"]["replace_all"]["type"] == "boolean"
    assert by_name["list_directory"]["properties"]["depth"]["type"] == "integer"
    assert by_name["run_terminal"]["required"] == ["command"]
    # Copies: a caller editing its list does not change the next one.
    definitions[0]["function"]["name"] = "changed"
    assert tool_definitions()[0]["function"]["name"] == "read_file"
    assert [d["function"]["name"] for d in tool_definitions(["run_terminal"])] == ["run_terminal"]
    with pytest.raises(ValueError, match="unknown tools"):
        tool_definitions(["rm_rf"])


@pytest.mark.parametrize(
    ("tool", "raw", "expected"),
    [
        ("read_file", {"file_path": "a.py"}, {"path": "a.py"}),
        ("read_file", {"filepath": "a.py"}, {"path": "a.py"}),
        ("read_file", {"file": "a.py"}, {"path": "a.py"}),
        ("write_file", {"path": "a", "text": "x"}, {"path": "a", "content": "x"}),
        ("write_file", {"path": "a", "contents": "x"}, {"path": "a", "content": "x"}),
        ("run_terminal", {"cmd": "ls"}, {"command": "ls"}),
        ("search_replace", {"path": "a", "old": "x", "new": "y"},
         {"path": "a", "search": "x", "replace": "y", "replace_all": False}),
        ("search_replace", {"file_path": "a", "old_string": "x", "new_string": "y", "replace_all": "true"},
         {"path": "a", "search": "x", "replace": "y", "replace_all": True}),
        ("search_replace", {"path": "a", "find": "x", "replace": "y"},
         {"path": "a", "search": "x", "replace": "y", "replace_all": False}),
        ("list_directory", {}, {"path": "."}),
        ("list_directory", {"directory": "src", "depth": "2"}, {"path": "src", "depth": 2}),
    ],
)
def test_aliases_are_mapped_to_canonical_names(tool: str, raw: dict[str, object], expected: dict[str, object]) -> None:
    assert normalise_arguments(tool, raw) == expected
    # Idempotent: canonical arguments stay as they are.
    assert normalise_arguments(tool, expected) == expected


def test_json_string_arguments_as_openai_sends_them() -> None:
    arguments = orjson.dumps({"file_path": "x.txt", "content": "hi"}).decode()
    call = parse_openai_tool_call(
        {"id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": arguments}}
    )
    assert call == ToolCall("write_file", {"path": "x.txt", "content": "hi"}, "call_1")
    assert coerce_call({"name": "read_file", "arguments": '{"path": "a"}'}).arguments == {"path": "a"}


def test_json_object_content_is_written_as_json() -> None:
    args = normalise_arguments("write_file", {"path": "package.json", "content": {"name": "demo"}})
    assert orjson.loads(args["content"]) == {"name": "demo"}


@pytest.mark.parametrize(
    ("tool", "raw", "message"),
    [
        ("read_file", {"path": "a", "encoding": "latin-1"}, r"unknown argument 'encoding'.*read_file\(path\)"),
        ("read_file", {}, r"missing argument 'path'"),
        ("write_file", {"path": "a"}, r"missing argument 'content'.*write_file\(path, content\)"),
        ("search_replace", {"path": "a", "search": "x"}, r"missing argument 'replace'"),
        ("read_file", {"path": "a", "file_path": "b"}, r"both 'path' and 'file_path'"),
        ("read_file", '{"path": ', r"not valid JSON"),
        ("read_file", "[1, 2]", r"must be a JSON object"),
        ("read_file", {"path": 3}, r"path must be a string"),
        ("list_directory", {"depth": 99}, r"depth must be from 1 to"),
        ("list_directory", {"depth": "deep"}, r"whole number"),
        ("search_replace", {"path": "a", "search": "x", "replace": "y", "replace_all": "maybe"}, r"true or false"),
        ("delete_file", {"path": "a"}, r"unknown tool 'delete_file'.*read_file"),
    ],
)
def test_bad_arguments_are_refused_with_a_message_for_the_model(tool: str, raw: object, message: str) -> None:
    with pytest.raises(ToolArgumentError, match=message):
        normalise_arguments(tool, raw)  # type: ignore[arg-type]
