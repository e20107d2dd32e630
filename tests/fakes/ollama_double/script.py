"""What the fake model answers: scripted turns, one per /api/chat request.

A test queues turns with `FakeOllama.script(...)`; each chat request pops the next one. A turn is a
`Reply` (chunks streamed in order, then the `done` chunk, or a failure) or a `DynamicReply` (a function
of the recorded request that returns a Reply).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from tests.fakes.ollama_double.recorded import RecordedRequest


@dataclass(frozen=True)
class ToolCall:
    """A tool call made by the model; `arguments` goes on the wire as a JSON object, not a string.

    `id` is generated ("call_xxxxxxxx") when None, as Ollama does.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Chunk:
    """The message of one streamed line.

    `content` is always sent (even empty); `thinking` and `tool_calls` only when non-empty.
    """

    content: str = ""
    thinking: str = ""
    tool_calls: Sequence[ToolCall] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))


@dataclass(frozen=True)
class HttpError:
    """Answer `status` with `{"error": message}` before anything is streamed."""

    status: int
    message: str


@dataclass(frozen=True)
class MidstreamError:
    """After the chunks, send a `{"error": message}` line and end the stream (status stays 200)."""

    message: str


@dataclass(frozen=True)
class GarbageLine:
    """After the chunks, send a line the client cannot JSON-decode and end the stream."""

    line: str = '{"model":"qwen3:4b","created_at":'


@dataclass(frozen=True)
class Hang:
    """After the chunks (if any), send nothing more and keep the connection open until the server stops.

    With no chunks the response headers are not sent either (a model still loading).
    """


Failure: TypeAlias = HttpError | MidstreamError | GarbageLine | Hang


def _chunks(parts: Sequence[Chunk | str]) -> tuple[Chunk, ...]:
    return tuple(part if isinstance(part, Chunk) else Chunk(content=part) for part in parts)


@dataclass(frozen=True)
class Reply:
    """One scripted model turn.

    Streamed: `chunks` in order (waiting `start_delay` before the first and `delay` between lines),
    then the `done:true` chunk carrying `final_content`, `final_tool_calls`, `done_reason` and the stats.
    Not streamed: one object aggregating all of it. `prompt_eval_count`/`eval_count` default to an
    estimate (~4 characters per token) of the request's messages and tools, and of this reply's output.
    With `failure` set, the turn ends that way instead of with the done chunk.
    """

    chunks: Sequence[Chunk] = ()
    final_tool_calls: Sequence[ToolCall] = ()
    final_content: str = ""
    delay: float = 0.0
    start_delay: float = 0.0
    done_reason: str = "stop"
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    failure: Failure | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", _chunks(self.chunks))
        object.__setattr__(self, "final_tool_calls", tuple(self.final_tool_calls))
        if isinstance(self.failure, HttpError) and (self.chunks or self.final_tool_calls):
            raise ValueError("an HTTP error reply sends no chunks")

    @classmethod
    def text(cls, *parts: str, thinking: str | Sequence[str] = (), delay: float = 0.0,
             **fields: Any) -> Reply:
        """Plain answer streamed as `parts` (one chunk each), after optional thinking chunks."""
        thoughts = (thinking,) if isinstance(thinking, str) else tuple(thinking)
        chunks = [Chunk(thinking=t) for t in thoughts] + [Chunk(content=p) for p in parts]
        return cls(chunks=chunks, delay=delay, **fields)

    @classmethod
    def tool_call(cls, name: str, arguments: Mapping[str, Any] | None = None, *,
                  before: Sequence[Chunk | str] = (), in_done_chunk: bool = False, **fields: Any) -> Reply:
        """One tool call, in its own chunk after `before` (or in the done chunk)."""
        return cls.tool_calls(ToolCall(name, dict(arguments or {})), before=before,
                              in_done_chunk=in_done_chunk, **fields)

    @classmethod
    def tool_calls(cls, *calls: ToolCall, before: Sequence[Chunk | str] = (),
                   in_done_chunk: bool = False, **fields: Any) -> Reply:
        """Several tool calls in one chunk after `before` (or all in the done chunk)."""
        if in_done_chunk:
            return cls(chunks=_chunks(before), final_tool_calls=calls, **fields)
        return cls(chunks=(*_chunks(before), Chunk(tool_calls=calls)), **fields)

    @classmethod
    def error_midstream(cls, message: str, after: Sequence[Chunk | str] = (), **fields: Any) -> Reply:
        """Stream `after`, then a `{"error": message}` line (the client raises ResponseError, status -1)."""
        return cls(chunks=_chunks(after), failure=MidstreamError(message), **fields)

    @classmethod
    def http_error(cls, status: int, message: str) -> Reply:
        """Answer `status` with `{"error": message}` (the client raises ResponseError(status))."""
        return cls(failure=HttpError(status, message))

    @classmethod
    def hang(cls, after: Sequence[Chunk | str] = (), **fields: Any) -> Reply:
        """Stream `after`, then go silent with the connection open until the server stops."""
        return cls(chunks=_chunks(after), failure=Hang(), **fields)

    @classmethod
    def garbage_line(cls, after: Sequence[Chunk | str] = (), line: str | None = None,
                     **fields: Any) -> Reply:
        """Stream `after`, then a line that is not JSON (the client raises json.JSONDecodeError)."""
        return cls(chunks=_chunks(after), failure=GarbageLine() if line is None else GarbageLine(line),
                   **fields)

    @staticmethod
    def dynamic(build: ReplyBuilder) -> DynamicReply:
        """A turn computed from the recorded request (sync or async function returning a Reply)."""
        return DynamicReply(build)


ReplyBuilder: TypeAlias = Callable[[RecordedRequest], "Reply | str | Awaitable[Reply | str]"]


@dataclass(frozen=True)
class DynamicReply:
    """A turn whose Reply is built when its request arrives; a returned str means Reply.text(str)."""

    build: ReplyBuilder


Turn: TypeAlias = Reply | DynamicReply | str
"""A scripted turn; a plain str is shorthand for Reply.text(str)."""
