"""Any OpenAI-compatible server: llama.cpp server, vLLM, LM Studio, Ollama's /v1.

The body goes upstream as the client sent it and the answer comes back byte for byte.
"""

from __future__ import annotations

from typing import ClassVar

import orjson
from pydantic import model_validator

from . import http
from .base import Backend, BackendRequest, BackendResponse, BackendSettings, BytesResponse

PATHS = {
    "chat": "/chat/completions",
    "agent_chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "models": "/models",
}


class OpenAISettings(BackendSettings):
    @model_validator(mode="after")
    def _needs_url(self) -> OpenAISettings:
        if not self.url:
            raise ValueError("an openai backend needs url, e.g. http://127.0.0.1:8080/v1")
        return self


class OpenAIBackend(Backend):
    kind = "openai"
    settings_model: ClassVar[type[BackendSettings]] = OpenAISettings

    async def handle(self, request: BackendRequest) -> BackendResponse:
        if request.endpoint == "models" and self.static_models:
            listing = [{"id": model, "object": "model", "owned_by": self.name} for model in self.static_models]
            body = orjson.dumps({"object": "list", "data": listing})
            return BytesResponse(200, body, {"Content-Type": "application/json"})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(request.headers)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        method = "GET" if request.endpoint == "models" else "POST"
        return await http.send(
            self.context,
            method,
            f"{self.url}{PATHS[request.endpoint]}",
            body=request.body if method == "POST" else None,
            headers=headers,
            what=f"backend {self.name!r}",
        )
