"""Any OpenAI-compatible server: llama.cpp server, vLLM, LM Studio, Ollama's /v1.

The body goes upstream as the client sent it and the answer comes back byte for byte.
"""

from __future__ import annotations

import orjson

from . import http
from .base import Backend, BackendRequest, BackendResponse, BytesResponse

PATHS = {
    "chat": "/chat/completions",
    "agent_chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "models": "/models",
}


class OpenAIBackend(Backend):
    kind = "openai"

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
