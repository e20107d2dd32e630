"""The bot as production runs it, pointed at a local Discord double: the child process of bench/stream.py.

    FAKE_DISCORD_URL=http://127.0.0.1:PORT DISCORD_TOKEN=... OLLAMA_HOST=... python bench/stream_bot.py

Settings come from the environment only (no .env). discord.py's REST base and gateway are pointed
at FAKE_DISCORD_URL (the two class attributes FakeDiscord.patch_discord sets), then the parts are
wired as `python -m bot run` wires them (bot.__main__.open_core, then AgentBot). Prints one line
`READY <pid>` on stdout once on_ready fired; SIGTERM or SIGINT closes the bot cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import discord.gateway
import discord.http
import yarl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.__main__ import configure_logging, open_core
from bot.client import AgentBot
from bot.config import Settings, load_settings
from bot.errors import BotError


def patch_discord(base_url: str) -> None:
    """What FakeDiscord.patch_discord does, without importing the tests into the bot's process."""
    discord.http.Route.BASE = f"{base_url}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{base_url.replace('http://', 'ws://')}/gateway")


async def run(settings: Settings) -> None:
    async with AsyncExitStack() as stack:
        agent = await open_core(stack, settings)
        bot = AgentBot(settings, agent.store, agent.vms, agent, agent.client)

        async def announce_ready() -> None:
            print(f"READY {os.getpid()}", flush=True)

        bot.add_listener(announce_ready, "on_ready")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))
        async with bot:
            await bot.start(settings.discord_token)


def main() -> int:
    patch_discord(os.environ["FAKE_DISCORD_URL"])
    try:
        settings = load_settings(_env_file=None)
        configure_logging(settings.log_level)
        asyncio.run(run(settings))
    except BotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
