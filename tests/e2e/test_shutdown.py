"""`python -m bot run` in a process of its own: SIGTERM (docker stop, systemd) interrupts running
turns with a footer that says so, keeps the VM's job running for Cancel after the restart, and exits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.store import Store
from bot.vm.docker_ops import remove_app
from tests.conftest import TEST_IMAGE
from tests.fakes.discord import FakeDiscord
from tests.fakes.ollama_server import FakeOllama, Reply

pytestmark = pytest.mark.docker

LAUNCHER = Path(__file__).with_name("bot_process.py")


async def test_sigterm_interrupts_turns_and_leaves_the_job_running(
        fake_discord: FakeDiscord, fake_ollama: FakeOllama, docker_client: Any, app_name: str, tmp_path: Path) -> None:
    fake = fake_discord
    alice = fake.add_user("alice")
    env = {**os.environ, "FAKE_DISCORD_URL": fake.url, "DISCORD_TOKEN": fake.token, "OLLAMA_HOST": fake_ollama.url,
           "SYNC_GUILD_IDS": str(fake.guild.id), "ALLOWED_USER_IDS": str(alice.id), "APP_NAME": app_name,
           "DATA_DIR": str(tmp_path / "data"), "VM_DESKTOP": "false", "VM_IMAGE": TEST_IMAGE,
           "BASE_IMAGE": os.environ.get("BASE_IMAGE", "agent-base:bookworm")}
    process = await asyncio.create_subprocess_exec(sys.executable, str(LAUNCHER), cwd=tmp_path, env=env,
                                                   stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 60)).startswith(b"READY")
        fake_ollama.script(Reply.tool_call("exec", {"command": "sleep 300 & setsid sleep 301; wait"}))
        general = fake.channel("general")
        await fake.run_command("task", alice, general, {"prompt": "sleep a while"})
        thread = await fake.wait_for(lambda: next(iter(fake.threads(general)), None), 20)
        await fake.wait_for(lambda: any(m.content.startswith("▶ **exec**") for m in fake.messages(thread)), 20)

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert any("⚠ interrupted: the bot restarted" in m.content for m in fake.messages(thread))
        async with Store.open(tmp_path / "data" / "bot.sqlite3") as store:
            assert (await store.get_task(1)).status == "interrupted"  # type: ignore[union-attr]
        vm = docker_client.containers.get(f"{app_name}-user-{alice.id}")
        processes = vm.exec_run(["ps", "-eo", "args"], user="agent").output.decode()
        assert sum(line.startswith("sleep 30") for line in processes.splitlines()) == 2  # Cancel stops them later
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        remove_app(docker_client, app_name)
