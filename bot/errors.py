"""One root exception for everything the bot reports to a user, with typed subclasses.

Third-party errors (docker, ollama, aiosqlite, discord) are translated where they are caught
(`raise SomeBotError(...) from exc`), so the front ends only ever handle `BotError`, whose
message is a sentence a user can act on.
"""

from __future__ import annotations


class BotError(Exception):
    """An error with a message fit to show a user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(BotError):
    """The configuration (environment or .env) is invalid."""


class AccessDenied(BotError):
    """The user may not do this."""


class EngineError(BotError):
    """The Docker engine is unreachable or refused an operation."""


class ImageError(EngineError):
    """The agent image is missing and could not be built."""


class VMError(BotError):
    """A VM could not be created, started or reached."""


class ChannelClosed(VMError):
    """The exec channel to a VM dropped; the call in flight did not complete."""


class VMRestarted(VMError):
    """The VM's container died and was recreated on the same volume; the call in flight was lost."""


class VMFileError(VMError):
    """A file operation in the VM failed (missing path, too large, refused archive member...)."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class ExecTimeout(VMError):
    """A command ran past its timeout and was killed with its whole job."""


class StoreError(BotError):
    """The database could not be read or written."""


class ModelError(BotError):
    """Ollama failed: unreachable, unknown model, no tool support, error mid-stream, timeout."""


class TurnCancelled(BotError):
    """A turn was cancelled by its owner or an admin."""


class DMClosed(BotError):
    """The user does not accept direct messages from the bot."""


class DeliveryFailed(BotError):
    """A notification could not be delivered now (Discord down, rate limited...); retried later."""
