"""Ollama's JSON on the wire: Go-style encoding, timestamps, and the objects of one /api/chat answer."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from tests.fakes.ollama_double.recorded import RecordedRequest
from tests.fakes.ollama_double.script import Chunk, Reply, ToolCall

CHARS_PER_TOKEN = 4
LOAD_DURATION_NS = 1_204_917  # a model already in memory still reports a small load time

_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
               ("\u2029", "\\u2029"))


def go_json(obj: Any) -> str:
    """Encode like Go's encoding/json: compact, raw UTF-8, HTML characters escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text


def created_at() -> str:
    """`created_at` as Ollama writes it (RFC 3339, UTC, sub-second digits)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def estimate_tokens(text_length: int) -> int:
    return max(1, math.ceil(text_length / CHARS_PER_TOKEN))


def estimate_prompt_tokens(body: Any) -> int:
    """~4 characters per token over the messages (role, content, thinking, tool calls) and tools."""
    if not isinstance(body, dict):
        return 1
    length = 0
    for message in body.get("messages") or []:
        length += len(str(message.get("role", ""))) + len(str(message.get("content") or ""))
        length += len(str(message.get("thinking") or ""))
        if message.get("tool_calls"):
            length += len(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        length += len(json.dumps(body["tools"]))
    return estimate_tokens(length)


class ChatRun:
    """Renders one Reply as the objects of an /api/chat answer, measuring durations as it goes.

    Thinking is dropped when the request says `think: false`, as a real thinking model then emits none.
    """

    def __init__(self, request: RecordedRequest, reply: Reply, new_call_id: Callable[[], str]) -> None:
        self.request = request
        self.reply = reply
        self._new_call_id = new_call_id
        self._think = request.think is not False
        self._calls = 0
        self._lines = 0
        self._output_chars = 0
        self._started = time.monotonic_ns()
        self._first: int | None = None

    def chunk(self, chunk: Chunk) -> dict[str, Any]:
        """A `done:false` line."""
        return {"model": self.request.model, "created_at": created_at(),
                "message": self._message(chunk.content, chunk.thinking, chunk.tool_calls), "done": False}

    def final(self) -> dict[str, Any]:
        """The `done:true` line with done_reason and the stats."""
        return self._done(self._message(self.reply.final_content, "", self.reply.final_tool_calls))

    def aggregate(self) -> dict[str, Any]:
        """The single object of a non-streamed answer: all chunks joined, all tool calls collected."""
        chunks = [*self.reply.chunks, Chunk(self.reply.final_content, "", self.reply.final_tool_calls)]
        content = "".join(chunk.content for chunk in chunks)
        thinking = "".join(chunk.thinking for chunk in chunks)
        calls = [call for chunk in chunks for call in chunk.tool_calls]
        return self._done(self._message(content, thinking, calls))

    def _message(self, content: str, thinking: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        if self._first is None:
            self._first = time.monotonic_ns()
        self._lines += 1
        message: dict[str, Any] = {"role": "assistant", "content": content}
        thinking = thinking if self._think else ""
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [self._tool_call(call) for call in calls]
        self._output_chars += len(content) + len(thinking)
        if calls:
            self._output_chars += len(json.dumps(message["tool_calls"]))
        return message

    def _tool_call(self, call: ToolCall) -> dict[str, Any]:
        index, self._calls = self._calls, self._calls + 1
        return {"id": call.id or self._new_call_id(),
                "function": {"index": index, "name": call.name, "arguments": dict(call.arguments)}}

    def _done(self, message: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic_ns()
        first = self._first if self._first is not None else now
        prompt_count = self.reply.prompt_eval_count
        eval_count = self.reply.eval_count
        return {
            "model": self.request.model, "created_at": created_at(), "message": message, "done": True,
            "done_reason": self.reply.done_reason,
            "total_duration": now - self._started + LOAD_DURATION_NS,
            "load_duration": LOAD_DURATION_NS,
            "prompt_eval_count": (estimate_prompt_tokens(self.request.body)
                                  if prompt_count is None else prompt_count),
            "prompt_eval_duration": max(first - self._started, 1),
            "eval_count": (max(self._lines - 1, estimate_tokens(self._output_chars))
                           if eval_count is None else eval_count),
            "eval_duration": max(now - first, 1),
        }
