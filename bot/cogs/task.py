"""/task prompt [file]: open a thread and let the agent work on the task there."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.turns import CancelButton, TurnRunner
from bot.cogs.uploads import check_uploads, upload_to_vm
from bot.errors import BotError

if TYPE_CHECKING:
    from bot.client import AgentBot

log = logging.getLogger(__name__)


def thread_name(prompt: str) -> str:
    name = " ".join(prompt.split())
    return (name[:95] + "…") if len(name) > 96 else name or "task"


class Task(commands.Cog):
    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot
        self.runner = TurnRunner(bot)

    @app_commands.command(name="task", description="Give your agent a task; it works on it in a new thread")
    @app_commands.describe(prompt="What the agent should do", file="A file to put in your VM (/workspace/uploads)")
    @app_commands.guild_only()
    async def task(self, interaction: discord.Interaction[Any], prompt: app_commands.Range[str, 1, 4000],
                   file: discord.Attachment | None = None) -> None:
        self.bot.check_access(interaction.user, interaction.guild)
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            raise BotError("Use /task in a text channel. Inside a task thread, just write your message.")
        check_uploads([file] if file else [])  # before anything is created
        await interaction.response.defer()
        thread = await self._open_thread(channel, prompt, interaction.user)
        key = self.bot.vms.key_for(interaction.user.id, thread.id)
        conversation = await self.bot.store.get_or_create_conversation(
            "thread", thread.id, interaction.user.id, key.scope, title=thread.name)
        text = prompt + (await upload_to_vm(self.bot, key, [file]) if file is not None else "")
        task = await self.bot.store.create_task(interaction.user.id, conversation.id, prompt,
                                                guild_id=interaction.guild_id)
        self.bot.spawn(self.runner.run(thread, thread.id, conversation, text, task, interaction.filesize_limit,
                                       interaction.user), name=f"task-{task.id}")
        async with self.bot.pacer.slot(channel.id):  # followups count against the channel's budget
            await interaction.followup.send(f"🧵 **Task #{task.id}** started by {interaction.user.mention} → "
                                            f"{thread.mention}")

    async def _open_thread(self, channel: discord.TextChannel, prompt: str,
                           user: discord.abc.User) -> discord.Thread:
        private = self.bot.settings.private_threads
        try:
            thread = await channel.create_thread(
                name=thread_name(prompt), auto_archive_duration=1440, invitable=False,
                type=discord.ChannelType.private_thread if private else discord.ChannelType.public_thread)
            if private:
                await thread.add_user(user)
        except discord.Forbidden as exc:
            raise BotError("I may not create threads in this channel: give me the Create Threads and Send "
                           "Messages in Threads permissions, or use another channel.") from exc
        except discord.HTTPException as exc:
            raise BotError(f"Discord would not create the thread ({exc.text or exc.status}). Try again.") from exc
        return thread


async def setup(bot: AgentBot) -> None:
    bot.add_dynamic_items(CancelButton)
    await bot.add_cog(Task(bot))
