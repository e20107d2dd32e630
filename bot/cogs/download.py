"""/download path: a file from the VM, or a folder as a zip, attached to the answer."""

from __future__ import annotations

import io
import posixpath
import zipfile
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.agent.text import human_size
from bot.errors import BotError, VMFileError
from bot.vm.protocol import MAX_PAYLOAD

if TYPE_CHECKING:
    from bot.client import AgentBot


def shown(path: str) -> str:
    return path if path.startswith("/") else posixpath.normpath(posixpath.join("/workspace", path))


class Download(commands.Cog):
    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot

    @app_commands.command(name="download", description="Get a file (or a zipped folder) from your VM")
    @app_commands.describe(path="A path in your VM, relative to /workspace (e.g. app.py or app/)")
    async def download(self, interaction: discord.Interaction[Any], path: app_commands.Range[str, 1, 1000]) -> None:
        self.bot.check_access(interaction.user, interaction.guild)
        await interaction.response.defer(ephemeral=True, thinking=True)
        limit = min(interaction.filesize_limit, MAX_PAYLOAD - (1 << 20))
        key = await self.bot.vm_key_here(interaction.user, interaction.channel)
        if key is None:
            raise BotError("Each task has its own VM here: use /download inside your task's thread.")
        channel = await self.bot.vms.channel(key)
        try:
            entry = await channel.stat(path)
            name = posixpath.basename(posixpath.normpath(path)) or "workspace"
            if entry.type == "dir":
                data, filename = await channel.archive_out(path, "zip", limit), f"{name}.zip"
                count = len([n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if not n.endswith("/")])
                caption = f"{filename} · {count} files · {human_size(len(data))}"
            else:
                if entry.size > limit:
                    raise VMFileError("", "too_large")
                data, filename = await channel.read_file(path, limit), name
                caption = f"{filename} · {human_size(len(data))}"
        except VMFileError as exc:
            raise BotError(self.explain(exc, path, limit)) from exc
        await interaction.followup.send(caption, file=discord.File(io.BytesIO(data), filename=filename),
                                        ephemeral=True)

    @staticmethod
    def explain(exc: VMFileError, path: str, limit: int) -> str:
        if exc.code == "not_found":
            return f"No file {shown(path)} in your VM. Try /download path: ."
        if exc.code == "too_large":
            return (f"{shown(path)} is larger than Discord's upload limit here ({human_size(limit)}). Make it "
                    f"smaller (e.g. compress it in the VM) and try again.")
        return f"Could not get {shown(path)}: {exc.message}"


async def setup(bot: AgentBot) -> None:
    await bot.add_cog(Download(bot))
