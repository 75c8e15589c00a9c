"""Pytest fixtures for a real llama.cpp server running the tiny generated model.

Load with ``pytest_plugins = ["tests.support.llama_fixture"]`` in the root conftest (or
``pytest -p tests.support.llama_fixture``). Importing this module does not import xllamacpp:
the native library only ever loads in the server's child process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.llama_server import LlamaServerProcess
from tests.support.tiny_model import write_tiny_model

__all__ = ["llama_server", "tiny_model_path"]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama GGUF (~240 KB), written once per session."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llama_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServerProcess]:
    """A started :class:`LlamaServerProcess` serving ``tiny_model_path`` as ``"tiny-llama"``.

    Use ``llama_server.base_url`` (``http://127.0.0.1:PORT/v1``) and ``llama_server.alias``.
    Its log stays in the session's tmp dir (``llama_server.log_path``) for post-mortems.
    """
    server = LlamaServerProcess(tiny_model_path, workdir=tmp_path_factory.mktemp("llama-server"))
    with server:
        yield server
