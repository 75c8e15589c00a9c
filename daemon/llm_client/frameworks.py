"""`get_model(format=...)`: which agent framework's model to build, and what to install for it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import LLMClient

# format -> (the framework's import name, the pip extra that installs it)
FORMATS: dict[str, tuple[str, str]] = {
    "strands": ("strands", "strands"),
    "langchain": ("langchain_core", "langchain"),
}
PARAMS = frozenset({"temperature", "max_tokens"})


class MissingExtraError(ImportError):
    """The agent framework a get_model format needs is not installed."""


def build_model(client: LLMClient, format: str, model: str | None, params: dict[str, Any]) -> Any:
    if format not in FORMATS:
        raise ValueError(f"unknown model format {format!r}: expected one of {', '.join(map(repr, FORMATS))}")
    unknown = set(params) - PARAMS
    if unknown:
        raise TypeError(f"unknown model parameters {sorted(unknown)}: expected {', '.join(sorted(PARAMS))}")
    package, extra = FORMATS[format]
    try:
        importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(f"get_model(format={format!r}) needs the {package} package: "
                                f"pip install 'llmtune-companion[{extra}]'") from None
    if format == "strands":
        from .strands_model import CompanionStrandsModel

        return CompanionStrandsModel(client, model_id=model, params=dict(params))
    from .langchain_model import ChatLLMTuneCompanion

    return ChatLLMTuneCompanion(client=client, model=model, **params)
