"""Running one turn into a Discord channel: task record, header, streamed reply, final state.

Shared by /task (a new thread) and chat (a message in a task thread or a DM). Long work is posted
as ordinary channel messages, never through the 15-minute interaction token.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from bot.agent.events import Done, Failed, Started, ToolStart
from bot.errors import BotError
from bot.records import Conversation, Task, TaskStatus
from bot.render import StreamRenderer, footer_for

if TYPE_CHECKING:
    from bot.client import AgentBot

log = logging.getLogger(__name__)

COLOURS = {"queued": discord.Colour.light_grey(), "running": discord.Colour.orange(),
           "done": discord.Colour.green(), "failed": discord.Colour.red(), "cancelled": discord.Colour.dark_grey(),
           "interrupted": discord.Colour.dark_grey()}


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"task:cancel:(?P<task_id>\d+)"):
    """Persistent (custom_id, no timeout, registered again at start): works for hours-long tasks
    and after a restart."""

    def __init__(self, task_id: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel", emoji="⏹", style=discord.ButtonStyle.danger,
                                           custom_id=f"task:cancel:{task_id}"))
        self.task_id = task_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> CancelButton:
        return cls(int(match["task_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot: AgentBot = interaction.client
        answer = await bot.get_cog("Task").runner.cancel(self.task_id, interaction.user)  # type: ignore[union-attr]
        await interaction.response.send_message(answer, ephemeral=True)


@dataclass
class _Progress:
    task: Task
    model: str
    vm: str
    max_steps: int
    step: int = 0
    started: float = field(default_factory=time.monotonic)


class TurnRunner:
    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot
        self.queued: dict[int, asyncio.Task[Any]] = {}  # task id -> the runner waiting for its turn
        self.running: dict[int, int] = {}  # conversation id -> task id of the turn running now
        self.cancelled_by: dict[int, str] = {}

    def vm_label(self, conversation: Conversation, owner: discord.abc.User) -> str:
        """Whose computer this is, as a person would say it: "alice" or "of this thread"."""
        return "of this thread" if self.bot.agent.vm_key(conversation).scope.startswith("thread-") \
            else owner.display_name

    def header(self, progress: _Progress, state: str) -> tuple[discord.Embed, discord.ui.View | None]:
        elapsed = int(time.monotonic() - progress.started)
        parts = [f"model {progress.model}", f"VM {progress.vm}"]
        if progress.step:
            parts.append(f"step {progress.step}/{progress.max_steps}")
        parts.append(f"{elapsed // 60:02d}:{elapsed % 60:02d}" if state != "queued" else "queued")
        embed = discord.Embed(title=f"Task #{progress.task.id}", description=" · ".join(parts),
                              colour=COLOURS.get(state, discord.Colour.default()))
        embed.set_footer(text=progress.task.prompt[:200])
        view = None
        if state in ("queued", "running", "interrupted"):  # interrupted: Cancel stops its leftovers
            view = discord.ui.View(timeout=None)
            view.add_item(CancelButton(progress.task.id))
        return embed, view

    async def run(self, channel: discord.abc.Messageable, channel_id: int, conversation: Conversation,
                  text: str, task: Task, upload_limit: int, owner: discord.abc.User) -> None:
        """Render one turn into the channel and keep the task record in step."""
        progress = _Progress(task, self.bot.agent.model.model, self.vm_label(conversation, owner),
                             self.bot.settings.max_steps)
        renderer = StreamRenderer(channel, channel_id, self.bot.pacer, upload_limit=upload_limit,
                                  header=lambda state: self.header(progress, state))
        self.queued[task.id] = asyncio.current_task()  # type: ignore[assignment]
        final: Done | Failed
        try:
            await renderer.start()
            if renderer.header is not None and renderer.header.message is not None:
                await self.bot.store.set_task_message_ref(task.id, f"{channel_id}/{renderer.header.message.id}")
            final = await self._stream(renderer, progress, conversation, text)
        except asyncio.CancelledError:  # cancelled while queued, or the bot is closing
            final = Failed("Interrupted: the bot restarted.", interrupted=True) if self.bot.agent.shutting_down \
                else Failed("Cancelled.", cancelled=True)
        except BotError as exc:  # e.g. the thread cannot be posted in
            final = Failed(exc.message)
        finally:
            self.queued.pop(task.id, None)
            if self.running.get(conversation.id) == task.id:
                self.running.pop(conversation.id)
        footer, state = footer_for(final, self.cancelled_by.pop(task.id, ""))
        status: TaskStatus = "done"
        error = None
        if isinstance(final, Failed):
            status = "interrupted" if final.interrupted else "cancelled" if final.cancelled else "failed"
            error = final.message
        await self.bot.store.set_task_status(task.id, status, error=error, steps=final.steps, tokens=final.tokens)
        await asyncio.shield(renderer.finish(footer, state))

    async def _stream(self, renderer: StreamRenderer, progress: _Progress, conversation: Conversation,
                      text: str) -> Done | Failed:
        final: Done | Failed = Failed("The turn ended without an answer.")
        async for event in self.bot.agent.run_turn(conversation, text):  # it ends after Done or Failed
            if isinstance(event, Started):
                self.queued.pop(progress.task.id, None)
                self.running[conversation.id] = progress.task.id
                progress.started = time.monotonic()
                await self.bot.store.set_task_status(progress.task.id, "running")
            elif isinstance(event, ToolStart) and event.step != progress.step:
                progress.step = event.step
                await self.bot.store.set_task_status(progress.task.id, "running", steps=event.step)  # for /status
            await renderer.feed(event)
            if isinstance(event, (Done, Failed)):
                final = event
        return final

    async def cancel(self, task_id: int, user: discord.abc.User) -> str:
        """The Cancel button: only the task's owner or an admin."""
        try:
            return await self._cancel(task_id, user)
        except BotError as exc:
            return exc.message

    async def _cancel(self, task_id: int, user: discord.abc.User) -> str:
        task = await self.bot.store.get_task(task_id)
        if task is None:
            return f"There is no task #{task_id}."
        if user.id != task.owner_id and not self.bot.access.is_admin(user.id):
            return f"Only <@{task.owner_id}> or an admin can cancel task #{task_id}."
        if task.conversation_id is not None and self.running.get(task.conversation_id) == task_id:
            self.cancelled_by[task_id] = user.mention
            self.bot.agent.cancel(task.conversation_id)
            return f"Cancelling task #{task_id}…"
        waiting = self.queued.get(task_id)
        if waiting is not None:
            self.cancelled_by[task_id] = user.mention
            waiting.cancel()
            return f"Task #{task_id} will not run."
        if task.conversation_id is not None and self.bot.agent.is_running(task.conversation_id):
            return f"Task #{task_id} is not running (it is {task.status}); a newer turn runs in this conversation."
        conversation = await self.bot.store.get_conversation(task.conversation_id or 0)
        killed = await self.bot.agent.kill_leftovers(conversation) if conversation else 0
        if task.status in ("running", "queued", "interrupted"):
            await self.bot.store.set_task_status(task_id, "cancelled", error=f"cancelled by {user}")
        return (f"Task #{task_id} is not running (it is {task.status})"
                + (f"; {killed} leftover process(es) of it in the VM were stopped." if killed else "."))
