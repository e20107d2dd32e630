"""/status, /download, Cancel, access control and notifications, end to end."""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from typing import Any

import pytest

from tests.e2e.conftest import BotRig
from tests.fakes.ollama_server import Reply

pytestmark = pytest.mark.docker


def ephemeral_answer(interaction: Any) -> str:
    answers = [m for m in interaction.responses if m.ephemeral]
    assert answers, f"no ephemeral answer in {interaction.responses}"
    return answers[-1].content


async def answered(rig: BotRig, interaction: Any) -> str:
    await rig.fake.wait_for(lambda: any(m.ephemeral and m.content for m in interaction.responses), 15)
    return ephemeral_answer(interaction)


async def test_status_shows_vm_model_and_tasks(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(Reply.tool_call("exec", {"command": "echo warm"}), "Done.")
    await rig.finished(await rig.task("warm up"))
    text = await answered(rig, await rig.fake.run_command("status", rig.alice, rig.general))
    assert "Your VM:** running · up" in text and "CPU" in text
    assert "Model:** qwen3:4b (tools ✓)" in text and "#1 done" in text
    assert "All VMs" not in text
    admin_text = await answered(rig, await rig.fake.run_command("status", rig.admin, rig.general))
    assert "All VMs (admin)" in admin_text and f"<@{rig.alice.id}>" in admin_text


async def test_download_file_folder_missing_and_too_large(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    channel = await rig.vms.channel(rig.vms.key_for(rig.alice.id))
    await channel.run("mkdir -p app && echo one > app/a.txt && echo two > app/b.txt && echo hi > hello.txt"
                      " && head -c 11000000 /dev/urandom > big.bin")

    file = await rig.fake.run_command("download", rig.alice, rig.general, {"path": "hello.txt"})
    await answered(rig, file)
    message = [m for m in file.responses if m.attachments][-1]
    assert message.ephemeral and message.attachments[0].data == b"hi\n" and "hello.txt" in message.content

    folder = await rig.fake.run_command("download", rig.alice, rig.general, {"path": "app/"})
    await answered(rig, folder)
    message = [m for m in folder.responses if m.attachments][-1]
    assert "app.zip · 2 files" in message.content
    names = sorted(zipfile.ZipFile(io.BytesIO(message.attachments[0].data)).namelist())
    assert [n for n in names if not n.endswith("/")] == ["app/a.txt", "app/b.txt"]

    missing = await rig.fake.run_command("download", rig.alice, rig.general, {"path": "nope.txt"})
    assert await answered(rig, missing) == "No file /workspace/nope.txt in your VM. Try /download path: ."
    big = await rig.fake.run_command("download", rig.alice, rig.general, {"path": "big.bin"})
    assert "larger than Discord's upload limit" in await answered(rig, big)


async def wait_for_card(rig: BotRig, thread: Any) -> Any:
    return await rig.fake.wait_for(
        lambda: next((m for m in rig.thread_messages(thread) if m.content.startswith("▶ **exec**")), None), 20)


async def sleeps_in_vm(rig: BotRig) -> int:
    done = await (await rig.vms.channel(rig.vms.key_for(rig.alice.id))).run("ps -eo args")
    return sum(line.startswith("sleep 30") for line in done.stdout.decode().splitlines())


async def test_cancel_kills_the_job_and_only_the_owner_may(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(Reply.tool_call("exec", {"command": "sleep 300 & setsid sleep 301; wait"}))
    thread = await rig.task("sleep a while")
    await wait_for_card(rig, thread)
    status = await answered(rig, await rig.fake.run_command("status", rig.alice, rig.general))
    assert "#1 running (step 1/20)" in status
    header = rig.thread_messages(thread)[0]
    custom_id = header.buttons()[0]["custom_id"]
    stranger = await rig.fake.click_button(rig.bob, header, custom_id)
    assert "Only <@" in await answered(rig, stranger)
    await rig.fake.click_button(rig.alice, header, custom_id)
    messages = await rig.finished(thread)
    assert any(f"⏹ cancelled by <@{rig.alice.id}>" in m.content for m in messages)
    assert await sleeps_in_vm(rig) == 0
    assert (await rig.store.get_task(1)).status == "cancelled"  # type: ignore[union-attr]


async def test_cancel_still_works_after_a_restart(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(Reply.tool_call("exec", {"command": "sleep 300 & setsid sleep 301; wait"}))
    thread = await rig.task("sleep a while")
    await wait_for_card(rig, thread)
    header = rig.thread_messages(thread)[0]
    rig = await rig.restart()  # the job goes on in the VM; the task is now interrupted
    assert (await rig.store.get_task(1)).status == "interrupted"  # type: ignore[union-attr]
    assert await sleeps_in_vm(rig) == 2
    click = await rig.fake.click_button(rig.alice, header, header.buttons()[0]["custom_id"])
    assert "leftover process" in await answered(rig, click)
    assert await sleeps_in_vm(rig) == 0


async def test_strangers_and_refused_users(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script("Hi alice.")
    thread = await rig.task("hello")
    await rig.finished(thread)
    for _ in range(2):
        await rig.fake.post_message(rig.bob, thread, "let me in")
    await rig.fake.wait_for(lambda: "belongs to" in rig.text(thread), 10)
    await asyncio.sleep(0.5)
    assert rig.text(thread).count("belongs to") == 1
    assert len(rig.ollama.chat_requests) == 1  # bob never reached the model

    carol = rig.fake.add_user("carol")
    refused = await rig.fake.run_command("task", carol, rig.general, {"prompt": "rm -rf /"})
    assert "not allowed" in await answered(rig, refused)


async def test_without_an_allow_list_only_admins_may(make_bot: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bot.access")
    rig: BotRig = await make_bot(allow=False)
    assert any("only admins may use the bot" in r.message for r in caplog.records)
    refused = await rig.fake.run_command("task", rig.alice, rig.general, {"prompt": "hello"})
    assert "only its admins" in await answered(rig, refused)
    rig.ollama.script("Hello admin.")
    await rig.finished(await rig.task("hello", user=rig.admin))


async def test_notifications_dm_fallback_restart_and_throttle(make_bot: Any, docker_client: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(Reply.tool_call("notify", {"text": "server is up"}), "Started it.")
    thread = await rig.task("start the server")
    await rig.finished(thread)
    dm = await rig.fake.wait_for(lambda: [m for m in rig.fake.dm_messages(rig.alice) if "server is up" in m.content])
    assert dm[0].content.startswith("🔔 Task #1: server is up") and str(thread.id) in dm[0].content

    rig.fake.close_dms(rig.alice)  # DMs closed: the same line in the thread
    channel = await rig.vms.channel(rig.vms.key_for(rig.alice.id))
    await channel.run("notify 'tests passed'", env={"AGENT_CONVERSATION": "1"})
    await rig.fake.wait_for(lambda: "🔔 Task #1: tests passed" in rig.text(thread), 10)
    rig.fake.open_dms(rig.alice)

    vm = docker_client.containers.get(rig.vms.container_name(rig.vms.key_for(rig.alice.id)))
    rig = await rig.restart(between=lambda: vm.exec_run(["notify", "built while you were away"], user="agent"))
    await rig.fake.wait_for(lambda: [m for m in rig.fake.dm_messages(rig.alice) if "while you were away" in m.content])
    await asyncio.sleep(1.0)
    assert sum("while you were away" in m.content for m in rig.fake.dm_messages(rig.alice)) == 1

    before = len(rig.fake.dm_messages(rig.alice))
    await (await rig.vms.channel(rig.vms.key_for(rig.alice.id))).run(
        "for i in $(seq 40); do notify \"spam $i\"; done", env={"AGENT_CONVERSATION": "1"})
    await asyncio.sleep(4)
    sent = rig.fake.dm_messages(rig.alice)[before:]
    assert 1 <= len(sent) <= 5, "a notify loop must be throttled"
    delivered = "\n".join(m.content for m in sent)
    assert "spam 1" in delivered
    assert await rig.store.pending_count() + delivered.count("spam ") >= 40  # nothing is lost


async def test_role_allowed_members_may_dm_the_bot(make_bot: Any, fake_discord: Any) -> None:
    role = fake_discord.add_role("agents")
    carol, dave = fake_discord.add_user("carol", roles=[role]), fake_discord.add_user("dave")
    rig: BotRig = await make_bot(allowed_user_ids=[], allowed_role_ids=[role.id])
    rig.ollama.script("Hello carol.")
    await rig.fake.send_dm(carol, "hi")
    await rig.finished(rig.fake.dm_channel(carol))
    assert "Hello carol." in "\n".join(m.content for m in rig.fake.dm_messages(carol))
    await rig.fake.send_dm(dave, "hi")
    await rig.fake.wait_for(lambda: any("not allowed" in m.content for m in rig.fake.dm_messages(dave)), 10)
    assert len(rig.ollama.chat_requests) == 1  # dave never reached the model


async def test_cancelling_a_queued_turn_leaves_the_running_one_cancellable(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(Reply.tool_call("exec", {"command": "sleep 300 & setsid sleep 301; wait"}), "never used")
    thread = await rig.task("sleep a while")
    await wait_for_card(rig, thread)
    await rig.fake.post_message(rig.alice, thread, "and then this")  # queued behind the running turn
    queued = await rig.fake.wait_for(lambda: [m for m in rig.thread_messages(thread)
                                              if m.embeds and m.embeds[0]["title"] == "Task #2"], 10)
    click = await rig.fake.click_button(rig.alice, queued[0], queued[0].buttons()[0]["custom_id"])
    assert "will not run" in await answered(rig, click)
    header = rig.thread_messages(thread)[0]
    click = await rig.fake.click_button(rig.alice, header, header.buttons()[0]["custom_id"])
    assert "Cancelling task #1" in await answered(rig, click)
    await rig.finished(thread, count=2)
    assert [(await rig.store.get_task(n)).status for n in (1, 2)] == ["cancelled", "cancelled"]  # type: ignore
    assert await sleeps_in_vm(rig) == 0
    assert rig.ollama.remaining == 1  # the queued turn never asked the model


async def test_with_one_vm_per_thread_commands_use_the_threads_vm(make_bot: Any) -> None:
    rig: BotRig = await make_bot(vm_scope="thread")
    rig.ollama.script(Reply.tool_call("write_file", {"path": "only-here.txt", "content": "thread vm"}), "Written.")
    thread = await rig.task("write a file")
    await rig.finished(thread)
    outside = await rig.fake.run_command("download", rig.alice, rig.general, {"path": "only-here.txt"})
    assert "inside your task's thread" in await answered(rig, outside)
    inside = await rig.fake.run_command("download", rig.alice, thread, {"path": "only-here.txt"})
    await answered(rig, inside)
    assert [m for m in inside.responses if m.attachments][-1].attachments[0].data == b"thread vm"
    status = await answered(rig, await rig.fake.run_command("status", rig.alice, rig.general))
    assert f"thread-{thread.id}: running" in status
    stranger = await rig.fake.run_command("download", rig.bob, thread, {"path": "only-here.txt"})
    assert "inside your task's thread" in await answered(rig, stranger)  # bob never reaches alice's VM
