"""The hosted LLMTune API: OpenAI-compatible chat relayed as bytes, plus the Agent model list.

The workspace key is put in here and nowhere else. The Agent API lists models as
`{success, data, count}`; that is translated to OpenAI's list shape here, at the edge.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from . import http
from .base import Backend, BackendRequest, BackendResponse, BytesResponse

PATHS = {
    "chat": "/v1/chat/completions",
    "agent_chat": "/api/agent/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "models": "/api/agent/models",
}


def agent_models_to_openai(body: bytes) -> bytes:
    """`{"success", "data": [{"id", "name", "owned_by"}], "count"}` -> OpenAI's `{"object": "list", ...}`."""
    parsed: Any = orjson.loads(body)
    items = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(items, list):
        raise ValueError("the agent model list has no 'data' array")
    models = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        model: dict[str, Any] = {
            "id": item["id"],
            "object": "model",
            "created": int(item.get("created") or 0),
            "owned_by": item.get("owned_by") or "llmtune",
        }
        if item.get("name"):
            model["name"] = item["name"]
        models.append(model)
    return orjson.dumps({"object": "list", "data": models})


class LLMTuneBackend(Backend):
    kind = "llmtune"
    # Built in from [hosted] (one per daemon), never a [backends.NAME] table.
    configurable: ClassVar[bool] = False
    injects_workspace_key: ClassVar[bool] = True
    per_workspace_models: ClassVar[bool] = True

    async def handle(self, request: BackendRequest) -> BackendResponse:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(request.headers)
        if request.api_key:
            headers["Authorization"] = f"Bearer {request.api_key}"
        if request.endpoint == "platform":
            if not request.path or not request.path.startswith("/"):
                raise ValueError("a platform request needs an absolute path")
            return await http.send(
                self.context,
                request.method,
                f"{self.url}{request.path}",
                body=None if request.method == "GET" else request.body,
                headers=headers,
                what="the hosted LLMTune API",
            )
        if request.endpoint != "models":
            return await http.send(
                self.context,
                "POST",
                f"{self.url}{PATHS[request.endpoint]}",
                body=request.body,
                headers=headers,
                what="the hosted LLMTune API",
            )
        response = await http.send(
            self.context, "GET", f"{self.url}{PATHS['models']}", headers=headers, what="the hosted LLMTune API"
        )
        try:
            body = await response.read()
        finally:
            await response.aclose()
        if response.status != 200:
            return BytesResponse(response.status, body, response.headers)
        return BytesResponse(200, agent_models_to_openai(body), {"Content-Type": "application/json"})
