"""Requests as the Ollama double received them, for tests to assert on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request: method, path, parsed JSON body (None if absent or not JSON), monotonic time.

    The chat accessors read the body as the client serialised it: messages are dicts with `role`,
    `content` and, when set, `thinking`, `tool_calls` and `tool_name` (empty values are dropped by the
    client); `options` holds e.g. `num_ctx`.
    """

    method: str
    path: str
    body: Any
    at: float

    def _get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default) if isinstance(self.body, dict) else default

    @property
    def model(self) -> str | None:
        model = self._get("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self._get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self._get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered to the model, in order."""
        return [tool.get("function", {}).get("name", "") for tool in self.tools]

    @property
    def options(self) -> dict[str, Any]:
        return dict(self._get("options") or {})

    @property
    def think(self) -> bool | str | None:
        think = self._get("think")
        return think if isinstance(think, bool | str) else None

    @property
    def stream(self) -> bool:
        """Ollama streams unless the request says `"stream": false`."""
        return self._get("stream") is not False

    @property
    def roles(self) -> list[str]:
        return [message.get("role", "") for message in self.messages]
