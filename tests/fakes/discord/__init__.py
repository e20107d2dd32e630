"""A local Discord for tests: REST + gateway over real sockets for the unmodified discord.py client.

Entry point: :class:`FakeDiscord` (server.py). Records: records.py.
"""

from __future__ import annotations

from .limits import ApiError
from .records import (
    ErrorRecord,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    Upload,
)
from .server import FakeDiscord

__all__ = [
    "ApiError", "ErrorRecord", "FakeAttachment", "FakeChannel", "FakeDiscord", "FakeGuild", "FakeInteraction",
    "FakeMessage", "FakeRole", "FakeUser", "MessageVersion", "Upload",
]
