"""What a turn yields, as it happens: the front ends (Discord, console) render these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Started:
    """The turn got its conversation's turn (earlier turns may have made it wait) and runs now."""

    max_steps: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolStart:
    call_id: int  # unique within the turn: pairs ToolOutput/ToolEnd with their start
    name: str
    arguments: dict[str, Any]
    step: int
    max_steps: int


@dataclass(frozen=True, slots=True)
class ToolOutput:
    call_id: int
    stream: Literal["stdout", "stderr"]
    text: str  # decoded, ANSI escapes removed


@dataclass(frozen=True, slots=True)
class ToolEnd:
    call_id: int
    name: str
    ok: bool
    summary: str  # one line: "exit 0", "timeout after 120 s", "wrote app.py (1.2 KB)", an error
    exit_code: int | None = None
    reason: str | None = None  # exec only: exit, timeout, killed, oom
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FileAttached:
    """A file (or a zipped folder) from the VM to attach to the reply."""

    path: str
    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class NotificationQueued:
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    steps: int
    tokens: int
    duration_s: float
    text: str  # the final answer (empty when the model said nothing)
    stopped_at_max_steps: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The turn ended on an error; `message` is one sentence for the user, partial text is kept."""

    message: str
    steps: int = 0
    tokens: int = 0
    duration_s: float = 0.0
    cancelled: bool = False
    interrupted: bool = False  # the bot is shutting down; the VM's job was left running


AgentEvent = (Started | TextDelta | ThinkingDelta | ToolStart | ToolOutput | ToolEnd | FileAttached
              | NotificationQueued | Done | Failed)
