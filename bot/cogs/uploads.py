"""Files users attach (to /task or to a thread message) go into the VM's /workspace/uploads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from bot.agent.text import human_size
from bot.errors import BotError
from bot.vm.manager import VMKey

if TYPE_CHECKING:
    from bot.client import AgentBot

UPLOAD_DIR = "uploads"
MAX_UPLOAD_BYTES = 25 * 1024 * 1024


def safe_name(filename: str) -> str:
    name = filename.replace("/", "_").replace("\\", "_").strip(". ")
    return name or "upload"


def check_uploads(attachments: Sequence[discord.Attachment]) -> None:
    for attachment in attachments:
        if attachment.size > MAX_UPLOAD_BYTES:
            raise BotError(f"{attachment.filename} is {human_size(attachment.size)}; files for the VM may be at "
                           f"most {human_size(MAX_UPLOAD_BYTES)}.")


async def upload_to_vm(bot: AgentBot, key: VMKey, attachments: Sequence[discord.Attachment]) -> str:
    """Copy the attachments into the VM; returns a note for the model saying where they are."""
    check_uploads(attachments)
    notes = []
    for attachment in attachments:
        try:
            data = await attachment.read()
        except discord.HTTPException as exc:
            raise BotError(f"Could not download {attachment.filename} from Discord; try again.") from exc
        path = f"{UPLOAD_DIR}/{safe_name(attachment.filename)}"
        await (await bot.vms.channel(key)).write_file(path, data)
        notes.append(f"/workspace/{path} ({human_size(len(data))})")
    return "\n\n[The user attached: " + ", ".join(notes) + "]" if notes else ""
