"""The records the store hands out: frozen dataclasses, times as UTC epoch seconds (float)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ollama

ConversationKind = Literal["thread", "dm", "console"]
Role = Literal["system", "user", "assistant", "tool"]
TaskStatus = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
Origin = Literal["tool", "vm"]
DeliveredVia = Literal["dm", "thread", "console"]
LinkKind = Literal["vnc", "download"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled", "interrupted"})


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    kind: ConversationKind
    external_id: str
    owner_id: int
    vm_key: str
    title: str
    created_at: float
    last_active_at: float


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: Role
    content: str
    thinking: str | None
    tool_calls: tuple[dict[str, Any], ...] | None  # each {"function": {"name", "arguments"}}
    tool_name: str | None
    tokens: int | None
    created_at: float

    def to_ollama(self) -> ollama.Message:
        calls = None
        if self.tool_calls:
            calls = [ollama.Message.ToolCall.model_validate(call) for call in self.tool_calls]
        return ollama.Message(role=self.role, content=self.content, thinking=self.thinking,
                              tool_calls=calls, tool_name=self.tool_name)


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    owner_id: int
    conversation_id: int | None
    prompt: str
    status: TaskStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    steps: int
    tokens: int
    guild_id: int | None
    message_ref: str | None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    owner_id: int
    conversation_id: int | None
    text: str
    origin: Origin
    created_at: float
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    delivered_via: DeliveredVia | None
    last_error: str | None
    source_key: str | None = None  # a VM notification's identity, so a resent one is stored once


@dataclass(frozen=True, slots=True)
class Link:
    id: int
    token_hash: str
    owner_id: int
    kind: LinkKind
    vm_key: str
    target: str
    created_at: float
    expires_at: float
    revoked: bool

    def is_live(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


def tool_calls_json(calls: Sequence[Any] | None) -> str | None:
    """ollama ToolCalls or {"function": {"name", "arguments"}} mappings -> the stored JSON text."""
    if not calls:
        return None
    plain = [c.model_dump() if isinstance(c, ollama.Message.ToolCall) else c for c in calls]
    return json.dumps([{"function": {"name": c["function"]["name"],
                                     "arguments": dict(c["function"]["arguments"])}} for c in plain])


def message_from_row(row: Mapping[str, Any]) -> StoredMessage:
    """A messages row (tool_calls as JSON text) -> a StoredMessage."""
    calls = row["tool_calls"]
    return StoredMessage(**{**row, "tool_calls": tuple(json.loads(calls)) if calls else None})


def link_from_row(row: Mapping[str, Any]) -> Link:
    return Link(**{**row, "revoked": bool(row["revoked"])})
