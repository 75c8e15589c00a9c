"""The commented config.toml template: written on first run, every setting in it, valid once uncommented."""

from __future__ import annotations

import re
import tomllib
import typing
from typing import Any

from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import Settings, load_config, read_settings, validate_settings
from llmtune_companion.config.template import backend_examples, render_template, write_template
from llmtune_companion.config.workspaces import add_workspace
from pydantic import BaseModel

SETTING_LINE = re.compile(r"^# (\[|[a-z_]+ = )")


def all_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf setting as `table.name`, walking nested models, dicts of models and lists of models."""
    found = []
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if name == "backends":
            continue  # one table per backend type: checked below
        args = typing.get_args(annotation)
        inner = args[-1] if typing.get_origin(annotation) is dict else args[0] if args else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            found += all_fields(inner, f"{prefix}{name}.")
        else:
            found.append(f"{prefix}{name}")
    return found


def uncommented(text: str) -> str:
    return "\n".join(line[2:] if SETTING_LINE.match(line) else line for line in text.splitlines())


def test_every_setting_appears_commented_out_under_its_table() -> None:
    text = render_template()
    assert all(line == "" or line.startswith("#") for line in text.splitlines()), "every line commented out"
    # Commented out: the template alone means the defaults.
    assert validate_settings(tomllib.loads(text)) == Settings()
    # Uncommented, it is valid TOML, with every setting in its table.
    document = tomllib.loads(uncommented(text))
    fields = all_fields(Settings)
    assert len(fields) >= 45
    placeholders = {"workspaces": "myproject"}
    for dotted in fields:
        node: Any = document
        parts = dotted.split(".")
        if parts[0] in placeholders:
            parts.insert(1, placeholders[parts[0]])
        if parts[0] == "routes":
            node = node["routes"][0]
            parts = parts[1:]
        for part in parts:
            assert part in node, f"{dotted} is missing from the template"
            node = node[part]
    # One [backends.X] table per backend type with its own keys, each key of its settings model in it.
    examples = backend_examples()
    assert {"openai", "bedrock"} <= {kind for kind, _ in examples.values()}
    for example, (kind, model) in examples.items():
        table = document["backends"][example]
        assert table["type"] == kind and set(model.model_fields) <= set(table), example
    # The values are the defaults (where there is one).
    defaults = Settings()
    for table in ("server", "upstream", "cache", "tools", "llm_api"):
        expected = {key: value for key, value in getattr(defaults, table).model_dump(mode="json").items()
                    if value is not None}  # unset settings show an example value
        assert {key: document[table][key] for key in expected} == expected, table


def test_written_on_first_run_and_never_over_a_config(home: Paths) -> None:
    assert not home.config_file.exists()
    load_config(home)  # the first command of a new user
    text = home.config_file.read_text(encoding="utf-8")
    assert text == render_template()
    assert read_settings(home.config_file) == Settings()
    # Editing through the CLI keeps the comments.
    add_workspace(home, "team", None)
    edited = home.config_file.read_text(encoding="utf-8")
    assert "[workspaces.team]" in edited and "# [server]" in edited
    # An existing file is never replaced.
    home.config_file.write_text("[server]\nport = 9000\n", encoding="utf-8")
    assert write_template(home) is False
    assert read_settings(home.config_file).server.port == 9000
