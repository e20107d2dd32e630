"""A protocol-faithful local Ollama double for tests, driven by a script of replies.

    async with FakeOllama() as fake:            # qwen3:4b with completion, tools, thinking
        fake.script(Reply.text("Hello ", "world", delay=0.05), Reply.tool_call("exec", {"command": "ls"}))
        client = ollama.AsyncClient(host=fake.url)
        ...
        assert fake.chat_requests[0].messages[-1] == {"role": "user", "content": "hi"}
        fake.assert_clean()

The implementation lives in tests/fakes/ollama_double/ (script, models, wire, server); wire facts in
../shared/notes/ollama-wire.md.
"""

from __future__ import annotations

from tests.fakes.ollama_double.models import ALL_CAPABILITIES, ModelSpec, full_name, short_name
from tests.fakes.ollama_double.recorded import RecordedRequest
from tests.fakes.ollama_double.script import (
    Chunk,
    DynamicReply,
    Failure,
    GarbageLine,
    Hang,
    HttpError,
    MidstreamError,
    Reply,
    ReplyBuilder,
    ToolCall,
    Turn,
)
from tests.fakes.ollama_double.server import DEFAULT_MODEL, FakeOllama, refused_url
from tests.fakes.ollama_double.wire import estimate_prompt_tokens

__all__ = [
    "ALL_CAPABILITIES", "Chunk", "DEFAULT_MODEL", "DynamicReply", "Failure", "FakeOllama", "GarbageLine",
    "Hang", "HttpError", "MidstreamError", "ModelSpec", "RecordedRequest", "Reply", "ReplyBuilder",
    "ToolCall", "Turn", "estimate_prompt_tokens", "full_name", "refused_url", "short_name",
]
