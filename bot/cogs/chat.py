"""Conversation outside slash commands: messages in a task thread from its owner continue that
conversation; DMs to the bot are a conversation of their own. Others writing in someone's thread
get a short notice once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.cogs.uploads import upload_to_vm
from bot.errors import BotError
from bot.render import NO_MENTIONS

if TYPE_CHECKING:
    from bot.client import AgentBot
    from bot.cogs.turns import TurnRunner

log = logging.getLogger(__name__)

DM_UPLOAD_LIMIT = 10 * 1024 * 1024


class Chat(commands.Cog):
    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot
        self.noticed: set[tuple[int, int]] = set()  # (thread, user) already told it is not theirs

    @property
    def runner(self) -> TurnRunner:
        return self.bot.get_cog("Task").runner  # type: ignore[union-attr]

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        if message.content.startswith(f"<@{self.bot.user.id if self.bot.user else 0}>"):
            return  # a command for the bot (e.g. sync), not a conversation
        try:
            if isinstance(message.channel, discord.DMChannel):
                await self._dm(message)
            elif isinstance(message.channel, discord.Thread):
                await self._thread(message, message.channel)
        except BotError as exc:
            await self._reply(message, exc.message)

    async def _reply(self, message: discord.Message, text: str) -> None:
        try:
            async with self.bot.pacer.slot(message.channel.id):
                await message.reply(text, allowed_mentions=NO_MENTIONS, mention_author=False)
        except discord.HTTPException as exc:
            log.warning("could not answer in %s: %s", message.channel.id, exc)

    async def _thread(self, message: discord.Message, thread: discord.Thread) -> None:
        conversation = await self.bot.store.find_conversation("thread", thread.id)
        if conversation is None:
            return  # not one of our task threads
        if message.author.id != conversation.owner_id:
            if (thread.id, message.author.id) not in self.noticed:
                self.noticed.add((thread.id, message.author.id))
                await self._reply(message, f"This thread belongs to <@{conversation.owner_id}>'s task; "
                                           "start your own with /task.")
            return
        self.bot.check_access(message.author, message.guild)
        await self._start(message, conversation.id, thread.guild.filesize_limit, thread.guild.id)

    async def _dm(self, message: discord.Message) -> None:
        await self.bot.check_dm_access(message.author)
        key = self.bot.vms.key_for(message.author.id, message.channel.id)
        conversation = await self.bot.store.get_or_create_conversation(
            "dm", message.channel.id, message.author.id, key.scope, title="DM")
        await self._start(message, conversation.id, DM_UPLOAD_LIMIT, None)

    async def _start(self, message: discord.Message, conversation_id: int, upload_limit: int,
                     guild_id: int | None) -> None:
        conversation = await self.bot.store.get_conversation(conversation_id)
        assert conversation is not None
        text = message.content
        if message.attachments:
            text += await upload_to_vm(self.bot, self.bot.agent.vm_key(conversation), message.attachments)
        if not text.strip():
            return
        await self.bot.store.touch_conversation(conversation.id)
        task = await self.bot.store.create_task(message.author.id, conversation.id, text, guild_id=guild_id)
        self.bot.spawn(self.runner.run(message.channel, message.channel.id, conversation, text, task, upload_limit,
                                       message.author), name=f"turn-{task.id}")


async def setup(bot: AgentBot) -> None:
    await bot.add_cog(Chat(bot))
