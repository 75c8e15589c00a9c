"""The variables OpenAI SDKs and tools read, as lines a shell evaluates or a `.env` file holds."""

from __future__ import annotations

from typing import Literal

Shell = Literal["sh", "fish", "powershell", "dotenv"]
SHELLS: tuple[Shell, ...] = ("sh", "fish", "powershell", "dotenv")


def variables(base_url: str, token: str) -> dict[str, str]:
    # OPENAI_API_BASE: what older tools (openai<1, LangChain's early releases) read instead.
    return {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": token, "OPENAI_API_BASE": base_url}


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _dotenv_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(values: dict[str, str], shell: Shell) -> str:
    if shell == "sh":
        lines = [f"export {name}={_sh_quote(value)}" for name, value in values.items()]
    elif shell == "fish":
        lines = [f"set -gx {name} {_fish_quote(value)}" for name, value in values.items()]
    elif shell == "powershell":
        lines = [f"$env:{name} = {_powershell_quote(value)}" for name, value in values.items()]
    else:
        lines = [f"{name}={_dotenv_quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"
