"""/status: the caller's VM, the model in use and their tasks; admins see everyone."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import discord
import ollama
from discord import app_commands
from discord.ext import commands

from bot.agent.text import human_size
from bot.errors import BotError
from bot.records import Task
from bot.vm.manager import VMStatus

if TYPE_CHECKING:
    from bot.client import AgentBot

log = logging.getLogger(__name__)

MODEL_CACHE_S = 60.0


def duration(seconds: float) -> str:
    minutes = int(seconds) // 60
    if minutes < 1:
        return f"{int(seconds)} s"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def vm_line(status: VMStatus) -> str:
    if status.state == "stopped":
        return "stopped (starts again when you use it)"
    if status.state == "missing":
        return "not created yet (it is made at your first task)"
    if status.state != "running":
        return f"{status.state} (its helper did not answer)"
    return (f"running · up {duration(status.uptime_s)} · {human_size(status.memory_bytes)} / "
            f"{human_size(status.memory_limit)} · CPU {status.cpu_percent:.0f} %")


def task_line(task: Task, max_steps: int, with_owner: bool = False) -> str:
    state: str = task.status
    if task.status == "failed" and task.error:
        state += f" ({task.error[:60]})"
    elif task.status == "running" and task.steps:
        state += f" (step {task.steps}/{max_steps})"
    return f"#{task.id}{f' <@{task.owner_id}>' if with_owner else ''} {state}"


class Status(commands.Cog):
    def __init__(self, bot: AgentBot) -> None:
        self.bot = bot
        self._model_line: tuple[float, str] | None = None

    async def model_line(self) -> str:
        if self._model_line and time.monotonic() - self._model_line[0] < MODEL_CACHE_S:
            return self._model_line[1]
        name = self.bot.settings.ollama_model
        try:
            shown = await self.bot.ollama.show(name)
            tools = "tools ✓" if "tools" in (shown.capabilities or []) else "no tool support ✗"
            line = f"{name} ({tools})"
        except ollama.ResponseError as exc:
            line = f"{name} (not available in Ollama: {exc.error})"
        except Exception as exc:  # unreachable host: httpx/ConnectionError
            log.info("ollama show failed: %r", exc)
            line = f"{name} (Ollama at {self.bot.settings.ollama_host} is not reachable)"
        self._model_line = (time.monotonic(), line)
        return line

    @app_commands.command(name="status", description="Your VM, the model and your tasks")
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        self.bot.check_access(interaction.user, interaction.guild)
        await interaction.response.defer(ephemeral=True, thinking=True)
        admin = self.bot.access.is_admin(interaction.user.id)
        key = await self.bot.vm_key_here(interaction.user, interaction.channel)
        try:
            if key is not None:
                vm = vm_line(await self.bot.vms.status(key))
            else:  # one VM per thread, and not asked from one: all of the user's
                mine = [s for s in await self.bot.vms.statuses() if s.key.owner_id == interaction.user.id]
                vm = " | ".join(f"{s.key.scope}: {vm_line(s)}" for s in mine) or vm_line(VMStatus(
                    self.bot.vms.key_for(interaction.user.id), "", "missing"))
        except BotError as exc:
            vm = f"unknown ({exc.message})"
        tasks = await self.bot.store.list_tasks(interaction.user.id, limit=8)
        lines = [f"**Your VM:** {vm}", f"**Model:** {await self.model_line()}",
                 "**Tasks:** " + (" · ".join(task_line(t, self.bot.settings.max_steps) for t in tasks)
                                  or "none yet")]
        if admin:
            lines += await self.admin_lines()
        await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True)

    async def admin_lines(self) -> list[str]:
        lines = ["", "**All VMs (admin):**"]
        try:
            statuses = await self.bot.vms.statuses()
        except BotError as exc:
            return lines + [f"unavailable: {exc.message}"]
        lines += [f"<@{s.key.owner_id}> {s.name}: {vm_line(s)}" for s in statuses] or ["none"]
        everyone = await self.bot.store.list_tasks(None, limit=10)
        lines.append("**All tasks:** " + (" · ".join(task_line(t, self.bot.settings.max_steps, with_owner=True)
                                                     for t in everyone) or "none"))
        return lines


async def setup(bot: AgentBot) -> None:
    await bot.add_cog(Status(bot))
