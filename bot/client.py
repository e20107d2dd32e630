"""AgentBot: the discord.py Bot that hosts the cogs, the app-command error handler, and the
Discord side of notification delivery. Everything it needs is opened in __main__ and passed in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import discord
import ollama
from discord import app_commands
from discord.ext import commands

from bot.access import AccessPolicy, Caller
from bot.agent.loop import Agent
from bot.config import Settings
from bot.errors import BotError, DeliveryFailed, DMClosed
from bot.notify import NotificationWorker
from bot.pacing import ChannelPacer
from bot.records import Conversation, ConversationKind
from bot.store import Store
from bot.vm.manager import VMKey, VMManager

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
NETWORK_ERRORS = (OSError, aiohttp.ClientError, TimeoutError)  # discord.py lets these through as they are
DM_CALLER_TTL_S = 300.0
COGS = ("bot.cogs.task", "bot.cogs.chat", "bot.cogs.status", "bot.cogs.download", "bot.cogs.admin")


class AgentBot(commands.Bot):
    def __init__(self, settings: Settings, store: Store, vms: VMManager, agent: Agent,
                 ollama_client: ollama.AsyncClient, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # thread and DM messages are the conversation
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self.store = store
        self.vms = vms
        self.agent = agent
        self.ollama = ollama_client
        self.pacer = ChannelPacer()
        self.access = AccessPolicy(settings)
        self.notifier = NotificationWorker(store, DiscordDelivery(self))
        self._background: set[asyncio.Task[Any]] = set()
        self._notifier_task: asyncio.Task[Any] | None = None
        self._dm_callers: dict[int, tuple[float, Caller]] = {}

    async def setup_hook(self) -> None:
        for cog in COGS:
            await self.load_extension(cog)
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]
        if self.application is not None and self.application.owner is not None:
            self.access = AccessPolicy(self.settings, extra_admins=[self.application.owner.id])
        for guild_id in self.settings.sync_guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild_id)
        if not self.settings.sync_guild_ids:
            log.warning("SYNC_GUILD_IDS is empty: commands were not synced. Mention the bot with "
                        "`sync global` (owner only) to sync them everywhere.")
        self._notifier_task = self.spawn(self.notifier.run(), name="notifications")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run in the background, keeping a reference; cancelled when the bot closes. A failure is
        logged at once (not when the task happens to be collected)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Interrupt the turns (their footers say so, the VMs' jobs keep running), then stop."""
        if self._notifier_task is not None:
            self._notifier_task.cancel()
        if self.agent.interrupt_all():
            turns = [task for task in self._background if task is not self._notifier_task]
            await asyncio.wait(turns, timeout=SHUTDOWN_GRACE_S)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().close()

    def caller(self, user: discord.abc.User, guild: discord.Guild | None) -> Caller:
        roles = frozenset(role.id for role in getattr(user, "roles", ()))
        return Caller(user.id, guild.id if guild else None, roles)

    def check_access(self, user: discord.abc.User, guild: discord.Guild | None) -> None:
        self.access.check(self.caller(user, guild))

    async def check_dm_access(self, user: discord.abc.User) -> None:
        """A DM carries no guild and no roles: look the user up in the servers the allow-list
        names (or all of the bot's servers, for a role list), so role- and guild-allowed members
        may DM the bot too. Found members are remembered for a few minutes."""
        seen = self._dm_callers.get(user.id)
        if seen is not None and time.monotonic() - seen[0] < DM_CALLER_TTL_S:
            self.access.check(seen[1])
            return
        caller = Caller(user.id, None)
        if not self.access.allowed(caller):
            for guild in self._allow_list_guilds():
                try:
                    member = guild.get_member(user.id) or await guild.fetch_member(user.id)
                except discord.HTTPException:
                    continue  # not a member there (404), or Discord failed: try the next one
                candidate = self.caller(member, guild)
                if self.access.allowed(candidate):
                    caller = candidate
                    break
        self._dm_callers[user.id] = (time.monotonic(), caller)
        self.access.check(caller)

    async def vm_key_here(self, user: discord.abc.User, channel: Any) -> VMKey | None:
        """The VM a command in this channel is about: the conversation's (its owner's own thread or
        DM), else the user's VM; None with VM_SCOPE=thread outside the user's own conversation."""
        kind: ConversationKind | None = "thread" if isinstance(channel, discord.Thread) else "dm" if isinstance(
            channel, discord.DMChannel) else None
        if kind is not None:
            conversation = await self.store.find_conversation(kind, channel.id)
            if conversation is not None and conversation.owner_id == user.id:
                return self.agent.vm_key(conversation)
        return self.vms.key_for(user.id) if self.settings.vm_scope == "user" else None

    def _allow_list_guilds(self) -> list[discord.Guild]:
        if self.access.guilds:
            return [g for g in (self.get_guild(i) for i in self.access.guilds) if g is not None]
        return list(self.guilds) if self.access.roles else []

    async def on_app_command_error(self, interaction: discord.Interaction[Any],
                                   error: app_commands.AppCommandError) -> None:
        """A BotError is one clear ephemeral sentence; anything else is logged and apologised for."""
        original = getattr(error, "original", error)
        if isinstance(original, BotError):
            text = original.message
        elif isinstance(error, app_commands.CheckFailure):
            text = str(error)
        else:
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=original)
            text = "Something went wrong inside the bot; the error is in its log."
        with contextlib.suppress(discord.HTTPException):
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)


class DiscordDelivery:
    """The notification worker's way out: a DM, or the conversation's thread."""

    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot

    async def _label(self, conversation: Conversation | None) -> tuple[str, str]:
        if conversation is None:
            return "🔔", ""
        tasks = await self.bot.store.tasks_of_conversation(conversation.id)
        label = f"🔔 Task #{tasks[-1].id}:" if tasks else "🔔"
        guild_id = tasks[-1].guild_id if tasks else None
        link = f"\nhttps://discord.com/channels/{guild_id}/{conversation.external_id}" \
            if conversation.kind == "thread" and guild_id else ""
        return label, link

    async def send_dm(self, owner_id: int, conversation: Conversation | None, text: str, nonce: str) -> None:
        label, link = await self._label(conversation)
        try:
            user = self.bot.get_user(owner_id) or await self.bot.fetch_user(owner_id)
            dm = await user.create_dm()
            async with self.bot.pacer.slot(dm.id):
                await dm.send(f"{label} {text}{link}"[:2000], nonce=nonce)
        except discord.Forbidden as exc:
            if exc.code == 50007:
                raise DMClosed(f"User {owner_id} does not accept DMs.") from exc
            raise DeliveryFailed(f"Discord refused the DM: {exc.text}") from exc
        except discord.HTTPException as exc:
            raise DeliveryFailed(f"Discord failed: {exc.status} {exc.text}") from exc
        except NETWORK_ERRORS as exc:
            raise DeliveryFailed(f"Discord could not be reached: {exc!r}") from exc

    async def post_in_conversation(self, conversation: Conversation, text: str, nonce: str) -> bool:
        if conversation.kind != "thread":
            return False
        label, _ = await self._label(conversation)
        try:
            channel = self.bot.get_channel(int(conversation.external_id)) \
                or await self.bot.fetch_channel(int(conversation.external_id))
            if not isinstance(channel, discord.abc.Messageable):
                return False
            async with self.bot.pacer.slot(channel.id):
                await channel.send(f"{label} {text}"[:2000], nonce=nonce)
        except discord.NotFound:
            return False
        except discord.HTTPException as exc:
            raise DeliveryFailed(f"Discord failed: {exc.status} {exc.text}") from exc
        except NETWORK_ERRORS as exc:
            raise DeliveryFailed(f"Discord could not be reached: {exc!r}") from exc
        return True
