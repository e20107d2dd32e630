"""/task, streaming, files, follow-ups, DMs, long replies and the rate budget, end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import FINAL, BotRig
from tests.fakes.ollama_server import Reply

pytestmark = pytest.mark.docker


async def test_task_streams_into_a_thread_with_a_file_and_a_follow_up(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(
        Reply.tool_call("write_file", {"path": "app.py", "content": "print('hi')\n"}),
        Reply.tool_call("attach_file", {"path": "app.py"}),
        Reply.text("Here ", "is ", "your ", "app, ", "it ", "is ", "all ", "done.", delay=0.6),
    )
    thread = await rig.task("make me an app")
    messages = await rig.finished(thread)

    command = rig.fake.messages(rig.general)[-1]
    assert "Task #1" in command.content and thread.mention in command.content
    header = messages[0]
    assert header.embeds[0]["title"] == "Task #1" and header.embeds[0]["color"] == 0x2ECC71  # green
    assert "model qwen3:4b · VM alice · step 2/20" in header.embeds[0]["description"]
    assert not header.buttons()  # Cancel is gone once done
    reply = next(m for m in messages if m.content.startswith("Here"))
    assert len(reply.versions) >= 3, "the reply should be seen growing through edits"
    assert "Here is your app, it is all done." in reply.content
    last = messages[-1]  # the files, captioned, with the footer
    assert "📎 app.py · 12 B" in last.content and "✅ done · 3 steps" in last.content
    cards = [m for m in messages if m.content.startswith("▶ **write_file**")]
    assert cards and "✓ wrote app.py" in cards[0].content
    assert [(a.filename, a.data) for a in last.attachments] == [("app.py", b"print('hi')\n")]

    rig.ollama.script(Reply.dynamic(lambda req: f"I see {len(req.messages)} messages."))
    await rig.fake.post_message(rig.alice, thread, "add a /health route")
    await rig.finished(thread, count=2)
    sent = rig.ollama.chat_requests[-1].messages
    assert sent[1]["content"] == "make me an app" and sent[-1]["content"] == "add a /health route"
    assert [m["tool_name"] for m in sent if m["role"] == "tool"] == ["write_file", "attach_file"]
    assert f"I see {len(sent)} messages." in rig.text(thread)
    assert rig.fake.rate_limited_count == 0


async def test_a_dm_is_a_conversation_of_its_own(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script("Hello from your agent.", Reply.dynamic(lambda req: f"{len(req.messages)} messages so far"))
    await rig.fake.send_dm(rig.alice, "hi there")
    dm = rig.fake.dm_channel(rig.alice)
    await rig.finished(dm)
    await rig.fake.send_dm(rig.alice, "and again")
    messages = await rig.finished(dm, count=2)
    text = "\n".join(m.content for m in messages)
    assert "Hello from your agent." in text and "4 messages so far" in text  # system, user, assistant, user


def fenced_reply(total: int) -> str:
    blocks, size, i = [], 0, 0
    while size < total:
        block = f"Step {i}: some words about it.\n```python\n" + "\n".join(
            f"value_{i}_{j} = {j} * {j}  # compute" for j in range(30)) + "\n```\n"
        blocks.append(block)
        size += len(block)
        i += 1
    return "".join(blocks)


async def test_a_long_reply_is_split_with_balanced_fences(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    long_text = fenced_reply(9000)
    rig.ollama.script(Reply.text(*[long_text[i:i + 500] for i in range(0, len(long_text), 500)], delay=0.05))
    thread = await rig.task("explain at length")
    messages = [m for m in await rig.finished(thread) if not m.embeds]
    assert len(messages) >= 5
    for message in messages:
        assert len(message.content) <= 2000 and message.content.count("```") % 2 == 0, message.content[-80:]
    joined = "".join(m.content for m in messages)
    assert "value_0_0 = 0 * 0" in joined and f"value_{long_text.count('Step ') - 1}_29" in joined


async def test_many_concurrent_tasks_never_trip_the_rate_limit(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    rig.ollama.script(*[Reply.text(*[f"word{i} " for i in range(12)], delay=0.25) for _ in range(23)])
    threads = await asyncio.gather(*[rig.task(f"task number {n}") for n in range(20)])
    for text in ("and more", "and even more"):  # two more turns in the first thread, queued behind it
        await rig.fake.post_message(rig.alice, threads[0], text)
    await asyncio.gather(*[rig.finished(t, count=3 if t is threads[0] else 1, timeout=180) for t in threads])
    assert rig.fake.rate_limited_count == 0
    first = [m.content for m in rig.thread_messages(threads[0]) if FINAL.search(m.content)]
    assert len(first) == 3 and all("✅ done" in c for c in first)
    tasks = await rig.store.list_tasks(rig.alice.id, limit=50)
    assert len(tasks) == 22 and [t.status for t in tasks] == ["done"] * 22, [(t.id, t.status, t.error) for t in tasks]


async def test_model_text_cannot_ping_anyone(make_bot: Any) -> None:
    rig: BotRig = await make_bot()
    role = rig.fake.add_role("staff")
    rig.ollama.script(f"Hello @everyone and @here, {role.mention} and {rig.bob.mention}!")
    thread = await rig.task("say hello")
    messages = await rig.finished(thread)
    reply = next(m for m in messages if "@everyone" in m.content)
    assert reply.allowed_mentions == {"parse": []}
    assert reply.mentions == [] and not reply.mention_everyone
