"""The whole bot end to end: discord.py -> the Discord double; ollama -> the Ollama double;
tools in real containers on the real engine."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import ollama
import pytest

from bot.agent.loop import Agent
from bot.agent.model import ModelConfig
from bot.client import AgentBot
from bot.notify import queue_vm_notification
from bot.store import Store
from bot.vm.docker_ops import remove_app
from bot.vm.manager import VMManager
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeMessage, FakeUser
from tests.fakes.ollama_server import FakeOllama

FINAL = re.compile(r"(✅ done|❌ failed|⏹ cancelled)")


@dataclass
class BotRig:
    fake: FakeDiscord
    ollama: FakeOllama
    store: Store
    vms: VMManager
    bot: AgentBot
    alice: FakeUser
    bob: FakeUser
    admin: FakeUser
    general: FakeChannel
    restart: Callable[..., Any] = field(repr=False, default=None)  # type: ignore[assignment]

    async def task(self, prompt: str, user: FakeUser | None = None, **options: Any) -> FakeChannel:
        """Run /task and return its thread (the turn goes on in the background)."""
        user = user or self.alice
        interaction = await self.fake.run_command("task", user, self.general, {"prompt": prompt, **options})

        def thread() -> FakeChannel | None:
            for message in interaction.responses:
                found = re.search(r"<#(\d+)>", message.content)
                if found:
                    return next(t for t in self.fake.threads(self.general) if t.id == int(found[1]))
            return None
        return await self.fake.wait_for(thread, 60)  # announcements are paced: 5 per 5 s per channel

    def thread_messages(self, thread: FakeChannel) -> list[FakeMessage]:
        return self.fake.messages(thread)

    def text(self, thread: FakeChannel) -> str:
        return "\n".join(m.content for m in self.thread_messages(thread))

    async def finished(self, channel: FakeChannel, count: int = 1, timeout: float = 60) -> list[FakeMessage]:
        """Wait until `count` turns in the channel have their footer; the messages then."""
        def done() -> list[FakeMessage] | None:
            messages = self.fake.messages(channel)
            footers = [m for m in messages if FINAL.search(m.content)]
            settled = not any(m.buttons() for m in messages)  # headers lose Cancel when final
            return messages if len(footers) >= count and settled else None
        return await self.fake.wait_for(done, timeout)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guild_name="Test Guild") as fake:
        with fake.patched():
            yield fake


@pytest.fixture
async def make_bot(make_settings: Callable[..., Any], docker_client: Any, fake_discord: FakeDiscord,
                   fake_ollama: FakeOllama, tmp_path: Any, app_name: str) -> AsyncIterator[Callable[..., Any]]:
    """Start the bot as __main__ does; `rig.restart()` stops it and starts a new one on the same data."""
    stacks: list[AsyncExitStack] = []
    fake = fake_discord
    alice, bob, admin = fake.add_user("alice"), fake.add_user("bob"), fake.add_user("root")

    async def start(allow: bool = True, **overrides: Any) -> BotRig:
        values: dict[str, Any] = dict(sync_guild_ids=[fake.guild.id], admin_user_ids=[admin.id],
                                      allowed_user_ids=[alice.id, bob.id] if allow else [])
        values.update(overrides)
        settings = make_settings(**values)
        stack = AsyncExitStack()
        stacks.append(stack)
        store = await stack.enter_async_context(Store.open(settings.database_path))
        await store.mark_interrupted()
        vms = await stack.enter_async_context(
            VMManager(settings, docker_client, on_notify=partial(queue_vm_notification, store)))
        client = ollama.AsyncClient(host=fake_ollama.url, timeout=10)
        stack.push_async_callback(client.close)
        model = ModelConfig(host=fake_ollama.url, model=settings.ollama_model, num_ctx=settings.ollama_num_ctx,
                            think=False, timeout_s=10, retries=2, backoff_s=0.05)
        agent = Agent(settings, store, vms, client, model)
        bot = AgentBot(settings, store, vms, agent, client, guild_ready_timeout=0.05)
        bot.notifier.poll_s = 0.3
        await stack.enter_async_context(fake.running(bot))
        rig = BotRig(fake, fake_ollama, store, vms, bot, alice, bob, admin, fake.channel("general"))

        async def restart(between: Callable[[], Any] | None = None, **again: Any) -> BotRig:
            """Stop the bot (its VMs keep running), run `between`, start a new bot on the same data."""
            await stack.aclose()
            if between is not None:
                await asyncio.to_thread(between)
            return await start(allow, **{**overrides, **again})

        rig.restart = restart
        return rig

    yield start
    for stack in reversed(stacks):
        await stack.aclose()
    remove_app(docker_client, app_name)
