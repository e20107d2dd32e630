"""`python -m bot run`, unchanged, pointed at a local Discord double: for tests and benches that need
the bot in a process of its own (its memory, its signals).

    FAKE_DISCORD_URL=http://127.0.0.1:PORT DISCORD_TOKEN=... OLLAMA_HOST=... python tests/e2e/bot_process.py

discord.py's REST base and gateway are pointed at FAKE_DISCORD_URL (the two class attributes that
FakeDiscord.patch_discord sets); then `bot.__main__.main(["run"])` runs as in production, settings
from the environment. One line `READY <pid>` is printed on stdout once the bot is ready.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import discord.gateway
import discord.http
import yarl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot import __main__ as cli  # noqa: E402
from bot.client import AgentBot  # noqa: E402

original_setup_hook = AgentBot.setup_hook


async def setup_hook_announcing_ready(self: AgentBot) -> None:
    await original_setup_hook(self)

    async def announce() -> None:
        print(f"READY {os.getpid()}", flush=True)

    self.add_listener(announce, "on_ready")


def main() -> int:
    base = os.environ["FAKE_DISCORD_URL"]
    discord.http.Route.BASE = f"{base}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"{base.replace('http://', 'ws://')}/gateway")
    AgentBot.setup_hook = setup_hook_announcing_ready  # type: ignore[method-assign]
    return cli.main(["run"])


if __name__ == "__main__":
    raise SystemExit(main())
