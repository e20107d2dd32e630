"""Command sync, uploads into the VM, private threads and the typing indicator, end to end."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import BotRig
from tests.fakes.ollama_server import Reply

pytestmark = pytest.mark.docker


async def test_commands_sync_to_the_guild_at_start_and_globally_only_on_the_owners_word(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    assert {c["name"] for c in rig.fake.commands(guild=True)} == {"task", "status", "download"}
    assert rig.fake.commands() == []

    await rig.fake.post_message(rig.alice, rig.general, f"<@{rig.fake.bot_user.id}> sync global")
    await rig.fake.wait_for(lambda: "Only the bot's owner" in "\n".join(
        m.content for m in rig.fake.messages(rig.general)))
    assert rig.fake.commands() == []

    await rig.fake.post_message(rig.fake.owner, rig.general, f"<@{rig.fake.bot_user.id}> sync global")
    await rig.fake.wait_for(lambda: rig.fake.commands(), 10)
    assert {c["name"] for c in rig.fake.commands()} == {"task", "status", "download"}


async def test_files_from_task_and_thread_messages_land_in_the_vm(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(Reply.dynamic(lambda req: "seen: " + req.messages[-1]["content"].split("[")[-1]),
                      Reply.dynamic(lambda req: "seen: " + req.messages[-1]["content"].split("[")[-1]))
    thread = await rig.task("look at my data", file=("data.csv", b"a,b\n1,2\n"))
    await rig.finished(thread)
    await rig.fake.post_message(rig.alice, thread, "and this one", files=[("notes v2.txt", b"hello")])
    await rig.finished(thread, count=2)
    assert "The user attached: /workspace/uploads/data.csv (8 B)" in rig.text(thread)
    assert "/workspace/uploads/notes v2.txt (5 B)" in rig.text(thread)
    channel = await rig.vms.channel(rig.vms.key_for(rig.alice.id))
    assert await channel.read_file("uploads/data.csv", 100) == b"a,b\n1,2\n"
    assert await channel.read_file("uploads/notes v2.txt", 100) == b"hello"


async def test_private_threads_and_typing_while_the_model_thinks(make_bot: Any) -> None:
    rig: BotRig = await make_bot(private_threads=True)
    rig.ollama.script(Reply.text("Done thinking.", thinking=["Hmm, ", "let me see. "] * 3, delay=0.3))
    thread = await rig.task("think about it")
    await rig.finished(thread)
    assert thread.type == 12 and rig.alice.id in [u.id for u in rig.fake.thread_members(thread)]
    assert thread.typing_count >= 1
    assert "Done thinking." in rig.text(thread)
