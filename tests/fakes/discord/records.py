"""Records the fake Discord keeps: users, roles, channels, messages, interactions.

Immutable things (users, roles, attachments, one version of a message, an error answered) are frozen
dataclasses; things that change over time (a channel's thread state, a message's versions, an
interaction's answers) are plain dataclasses compared by identity.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1420070400000

# Channel types (Discord's numbers).
TEXT, DM, CATEGORY, PUBLIC_THREAD, PRIVATE_THREAD = 0, 1, 4, 11, 12
# Message flags.
EPHEMERAL, LOADING = 64, 128
# Interaction types.
APPLICATION_COMMAND, MESSAGE_COMPONENT = 2, 3


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class Snowflakes:
    """Discord ids: milliseconds since the Discord epoch << 22, strictly increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last


@dataclass(frozen=True)
class FakeUser:
    id: int
    name: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(frozen=True)
class FakeRole:
    id: int
    name: str
    permissions: int = 0
    position: int = 0

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass(frozen=True)
class FakeGuild:
    id: int
    name: str


@dataclass(frozen=True)
class FakeAttachment:
    """A file kept by the fake CDN; ``url`` serves ``data``."""

    id: int
    filename: str
    data: bytes
    url: str
    content_type: str | None = None
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Upload:
    """One file part of a multipart request (``files[n]``)."""

    filename: str
    data: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class MessageVersion:
    """What a message looked like after its creation or after one edit."""

    content: str
    embeds: tuple[JSON, ...]
    components: tuple[JSON, ...]
    attachments: tuple[FakeAttachment, ...]
    flags: int
    allowed_mentions: JSON | None
    mentions: tuple[int, ...]
    mention_everyone: bool
    at: dt.datetime


@dataclass(frozen=True)
class ErrorRecord:
    """An error the fake answered (4xx), kept so tests can assert on what the bot got wrong."""

    method: str
    path: str
    status: int
    code: int
    message: str


@dataclass(eq=False)
class FakeChannel:
    """A guild text channel, a thread (type 11/12) or a DM channel (type 1)."""

    id: int
    type: int
    name: str
    guild_id: int | None
    parent_id: int | None = None
    position: int = 0
    topic: str | None = None
    owner_id: int | None = None
    recipient_id: int | None = None
    archived: bool = False
    locked: bool = False
    invitable: bool = True
    auto_archive_duration: int = 1440
    member_ids: list[int] = field(default_factory=list)
    message_count: int = 0
    last_message_id: int | None = None
    typing_count: int = 0
    created_at: dt.datetime = field(default_factory=utcnow)

    @property
    def is_thread(self) -> bool:
        return self.type in (PUBLIC_THREAD, PRIVATE_THREAD)

    @property
    def is_dm(self) -> bool:
        return self.type == DM

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass(eq=False)
class FakeMessage:
    """A message and its whole history: ``versions[0]`` as created, one more per edit."""

    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    versions: list[MessageVersion]
    type: int = 0
    nonce: str | int | None = None
    tts: bool = False
    webhook_id: int | None = None
    interaction_id: int | None = None
    reference: JSON | None = None
    thread_id: int | None = None
    reactions: list[str] = field(default_factory=list)  # emoji the bot added
    deleted: bool = False
    created_at: dt.datetime = field(default_factory=utcnow)

    @property
    def current(self) -> MessageVersion:
        return self.versions[-1]

    @property
    def content(self) -> str:
        return self.current.content

    @property
    def embeds(self) -> list[JSON]:
        return list(self.current.embeds)

    @property
    def components(self) -> list[JSON]:
        return list(self.current.components)

    @property
    def attachments(self) -> list[FakeAttachment]:
        return list(self.current.attachments)

    @property
    def flags(self) -> int:
        return self.current.flags

    @property
    def allowed_mentions(self) -> JSON | None:
        return self.current.allowed_mentions

    @property
    def mentions(self) -> list[int]:
        """Ids of the users this message really pinged (after allowed_mentions)."""
        return list(self.current.mentions)

    @property
    def mention_everyone(self) -> bool:
        return self.current.mention_everyone

    @property
    def edits(self) -> list[MessageVersion]:
        """Every edit, oldest first (``versions`` also holds the original)."""
        return self.versions[1:]

    @property
    def edited_at(self) -> dt.datetime | None:
        return self.versions[-1].at if len(self.versions) > 1 else None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def buttons(self) -> list[JSON]:
        """Every button (type 2) in the message's components, nested rows included."""
        return [c for c in _walk(self.current.components) if c.get("type") == 2]

    def button(self, custom_id: str) -> JSON | None:
        return next((b for b in self.buttons() if b.get("custom_id") == custom_id), None)


def _walk(components: tuple[JSON, ...] | list[JSON]) -> Iterator[JSON]:
    for component in components:
        yield component
        yield from _walk(component.get("components", []))
        accessory = component.get("accessory")
        if isinstance(accessory, dict):
            yield accessory


@dataclass(eq=False)
class FakeInteraction:
    """A slash command or a component click the fake sent, and what the bot answered."""

    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    guild_id: int | None
    created_at: float  # time.monotonic() when INTERACTION_CREATE was sent
    name: str | None = None  # command name ("group sub" for subcommands)
    custom_id: str | None = None
    options: list[JSON] = field(default_factory=list)
    message_id: int | None = None  # the message whose component was used
    callback_type: int | None = None
    callback_data: JSON | None = None  # the callback's data (a modal, autocomplete choices, ...)
    original_id: int | None = None
    responses: list[FakeMessage] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        return self.callback_type in (5, 6)

    @property
    def original(self) -> FakeMessage | None:
        return next((m for m in self.responses if m.id == self.original_id), None)

    @property
    def followups(self) -> list[FakeMessage]:
        return [m for m in self.responses if m.id != self.original_id]
