"""The agent loop: the official ollama client against the Ollama double, tools in real containers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.agent.events import Done, Failed, NotificationQueued, TextDelta, ToolEnd, ToolOutput, ToolStart
from bot.agent.loop import Agent
from bot.records import StoredMessage
from bot.store import Store
from tests.conftest import AgentRig
from tests.fakes.ollama_server import Chunk, ModelSpec, Reply, ToolCall, refused_url

pytestmark = pytest.mark.docker


def assert_well_formed(history: list[StoredMessage]) -> None:
    """Every tool call is answered by a tool message of the same name, in order, before the next turn."""
    waiting: list[str] = []
    for message in history:
        if message.role == "tool":
            assert waiting and waiting.pop(0) == message.tool_name, f"unexpected tool message {message}"
        else:
            assert not waiting, f"tool calls {waiting} left without results before {message.role}"
        if message.role == "assistant" and message.tool_calls:
            waiting = [call["function"]["name"] for call in message.tool_calls]
    assert not waiting


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_three_step_task_writes_runs_and_reads(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(
        Reply.tool_call("write_file", {"path": "hello.py", "content": "print(6 * 7)\n"}, before=["Writing it."]),
        Reply.tool_call("exec", {"command": "python3 hello.py > out.txt && echo ran"}),
        Reply.tool_call("read_file", {"path": "out.txt"}),
        Reply.dynamic(lambda req: f"The script printed {req.messages[-1]['content'].strip()}."),
    )
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "write a script that prints 6*7, run it, show me the output")

    assert isinstance(events[-1], Done) and events[-1].steps == 4
    assert events[-1].text == "The script printed 42."
    assert [e.name for e in events if isinstance(e, ToolStart)] == ["write_file", "exec", "read_file"]
    assert all(e.ok for e in events if isinstance(e, ToolEnd))
    assert "ran" in "".join(e.text for e in events if isinstance(e, ToolOutput))
    channel = await rig.vms.channel(rig.vms.key_for(1001))
    assert await channel.read_file("hello.py", 100) == b"print(6 * 7)\n"
    assert await channel.read_file("out.txt", 100) == b"42\n"
    tool_messages = [m for m in rig.ollama.chat_requests[-1].messages if m["role"] == "tool"]
    assert [m["tool_name"] for m in tool_messages] == ["write_file", "exec", "read_file"]
    assert_well_formed(await rig.store.history(conversation.id))
    rig.ollama.assert_clean()


async def test_restart_sends_history_memory_and_num_ctx(make_rig: Any, tmp_path: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(Reply.tool_call("remember", {"note": "prefers tabs"}),
                      Reply.tool_call("exec", {"command": "echo first-turn-output"}), "Noted and done.")
    conversation = await rig.conversation()
    assert isinstance((await rig.turn(conversation, "remember I like tabs, then echo"))[-1], Done)

    # A new store and agent on the same database: the bot restarted.
    async with Store.open(tmp_path / "data" / "bot.sqlite3") as store:
        agent = Agent(rig.vms.settings, store, rig.vms, rig.agent.client, rig.agent.model)
        again = await store.get_conversation(conversation.id)
        assert again is not None
        rig.ollama.script("Second answer.")
        events = [e async for e in agent.run_turn(again, "and now?")]
    assert isinstance(events[-1], Done)
    sent = rig.ollama.chat_requests[-1]
    assert sent.options["num_ctx"] == rig.vms.settings.ollama_num_ctx
    assert sent.messages[0]["role"] == "system" and "prefers tabs" in sent.messages[0]["content"]
    assert [m["role"] for m in sent.messages[1:]] == ["user", "assistant", "tool", "assistant", "tool",
                                                      "assistant", "user"]
    assert sent.messages[1]["content"] == "remember I like tabs, then echo"
    assert sent.messages[5]["tool_name"] == "exec" and "first-turn-output" in sent.messages[5]["content"]
    assert sent.messages[-1]["content"] == "and now?"


HOSTILE = {
    "unknown tool": (Reply.tool_call("teleport", {"to": "mars"}), "no tool named 'teleport'"),
    "missing argument": (Reply.tool_call("write_file", {"path": "a.txt"}), "needs the argument content"),
    "wrong type": (Reply.tool_call("exec", {"command": 42}), "must be a string, not int"),
    "extra argument": (Reply.tool_call("read_file", {"path": "a", "mode": "rb"}), "has no argument mode"),
    "empty tool name": (Reply.tool_call("", {}), "no tool named ''"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_bad_tool_calls_go_back_to_the_model(make_rig: Any, case: str) -> None:
    rig: AgentRig = await make_rig()
    reply, expected = HOSTILE[case]
    rig.ollama.script(reply, "Sorry, fixed.")
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "go")
    assert isinstance(events[-1], Done) and events[-1].text == "Sorry, fixed."
    tool_message = rig.ollama.chat_requests[-1].messages[-1]
    assert tool_message["role"] == "tool" and expected in tool_message["content"]
    assert_well_formed(await rig.store.history(conversation.id))


async def test_several_calls_in_one_chunk_and_calls_in_the_done_chunk(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(
        Reply.tool_calls(ToolCall("exec", {"command": "echo one"}), ToolCall("exec", {"command": "echo two"})),
        Reply.tool_call("list_dir", {}, in_done_chunk=True, before=["Looking."]),
        "All done.")
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "go")
    assert isinstance(events[-1], Done) and events[-1].text == "All done."
    results = [m for m in rig.ollama.chat_requests[1].messages if m["role"] == "tool"]
    assert ["one" in results[0]["content"], "two" in results[1]["content"]] == [True, True]
    assert rig.ollama.chat_requests[2].messages[-1]["tool_name"] == "list_dir"
    assert_well_formed(await rig.store.history(conversation.id))


async def test_huge_binary_and_ansi_output_is_capped_and_cleaned(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(
        Reply.tool_call("exec", {"command": "head -c 20000000 /dev/zero | tr '\\0' 'x'"}),
        Reply.tool_call("exec", {"command": "printf '\\033[31mred\\033[0m \\xff\\xfe ok\\n'"}),
        "Seen.")
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "go")
    assert isinstance(events[-1], Done)
    huge, colored = [m for m in rig.ollama.chat_requests[-1].messages if m["role"] == "tool"]
    assert len(huge["content"]) < 10_000 and "19,934,464 bytes of output dropped" in huge["content"]
    assert "red \ufffd\ufffd ok" in colored["content"] and "\x1b" not in colored["content"]
    assert_well_formed(await rig.store.history(conversation.id))


@pytest.mark.parametrize("reply, note", [
    (Reply.text(""), "empty answer"),
    (Reply.text("", thinking="I am only thinking"), "only thought"),
])
async def test_empty_and_thinking_only_answers_are_said(make_rig: Any, reply: Reply, note: str) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(reply)
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "go")
    assert isinstance(events[-1], Done) and note in text_of(events)
    assert_well_formed(await rig.store.history(conversation.id))


async def test_a_model_that_calls_tools_forever_stops_at_max_steps(make_rig: Any) -> None:
    rig: AgentRig = await make_rig(max_steps=3)
    rig.ollama.script(*[Reply.tool_call("exec", {"command": "true"}) for _ in range(3)])
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "loop")
    assert isinstance(events[-1], Done) and events[-1].stopped_at_max_steps and events[-1].steps == 3
    assert "MAX_STEPS" in text_of(events)
    assert_well_formed(await rig.store.history(conversation.id))


FAILURES = {
    "error mid-stream": ([Reply.error_midstream("model runner crashed", after=[Chunk(content="Partial ")])],
                         "failed in the middle", "Partial "),
    "unparseable chunk": ([Reply.garbage_line(after=[Chunk(content="Half ")])], "could not be read", "Half "),
    "server hangs": ([Reply.hang()], "did not answer within", None),
    # retried once with backoff, then reported
    "http 500 twice": ([Reply.http_error(500, "out of memory")] * 2, "out of memory", None),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_model_failures_end_with_one_clear_sentence(make_rig: Any, case: str) -> None:
    rig: AgentRig = await make_rig(timeout=1.5)
    replies, expected, kept = FAILURES[case]
    rig.ollama.script(*replies)
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "go")
    assert isinstance(events[-1], Failed) and expected in events[-1].message
    history = await rig.store.history(conversation.id)
    assert history[0].content == "go"
    if kept:
        assert history[-1].role == "assistant" and history[-1].content == kept
    assert_well_formed(history)
    rig.ollama.script("Back.")  # the conversation goes on
    assert isinstance((await rig.turn(conversation, "again?"))[-1], Done)


async def test_unknown_model_and_model_without_tools(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.add_model(ModelSpec("tiny:1b", capabilities=("completion",)))
    conversation = await rig.conversation()
    rig.agent.model = type(rig.agent.model)(**{**rig.agent.model.__dict__, "model": "missing:7b"})
    events = await rig.turn(conversation, "hello")
    assert isinstance(events[-1], Failed) and "ollama pull missing:7b" in events[-1].message
    rig.agent.model = type(rig.agent.model)(**{**rig.agent.model.__dict__, "model": "tiny:1b"})
    events = await rig.turn(conversation, "hello")
    assert isinstance(events[-1], Failed) and "does not support tools" in events[-1].message
    assert_well_formed(await rig.store.history(conversation.id))


async def test_connection_refused_names_the_url(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    url = refused_url()
    rig.agent.client = type(rig.agent.client)(host=url, timeout=2)
    rig.agent.model = type(rig.agent.model)(**{**rig.agent.model.__dict__, "host": url})
    events = await rig.turn(await rig.conversation(), "hello")
    await rig.agent.client.close()
    assert isinstance(events[-1], Failed) and f"Ollama at {url} is not reachable" in events[-1].message


async def test_notify_tool_and_in_vm_notify_reach_the_outbox(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(Reply.tool_call("notify", {"text": "server is up"}),
                      Reply.tool_call("exec", {"command": "notify 'tests passed'"}), "Told you.")
    conversation = await rig.conversation()
    events = await rig.turn(conversation, "go")
    assert any(isinstance(e, NotificationQueued) for e in events)
    for _ in range(50):
        items = await rig.store.due_notifications()
        if len(items) == 2:
            break
        await asyncio.sleep(0.1)
    assert sorted((i.text, i.origin, i.conversation_id) for i in items) == [
        ("server is up", "tool", conversation.id), ("tests passed", "vm", conversation.id)]


async def test_cancel_mid_exec_kills_the_job(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(Reply.tool_call("exec", {"command": "sleep 300 & setsid sleep 301; wait"}))
    conversation = await rig.conversation()
    events: list[Any] = []

    async def consume() -> None:
        async for event in rig.agent.run_turn(conversation, "sleep a lot"):
            events.append(event)
            if isinstance(event, ToolStart):
                await asyncio.sleep(0.5)
                assert rig.agent.cancel(conversation.id)

    await asyncio.wait_for(consume(), 20)
    assert isinstance(events[-1], Failed) and events[-1].cancelled
    done = await (await rig.vms.channel(rig.vms.key_for(1001))).run("ps -eo args | grep -c '[s]leep 30' || true")
    assert done.stdout.strip() == b"0"
    assert_well_formed(await rig.store.history(conversation.id))


async def test_a_message_during_a_turn_is_answered_after_it_in_order(make_rig: Any) -> None:
    rig: AgentRig = await make_rig()
    rig.ollama.script(Reply.text("first ", "answer", delay=0.5), Reply.dynamic(
        lambda req: f"second answer to {req.messages[-1]['content']}"))
    conversation = await rig.conversation()
    first = asyncio.create_task(rig.turn(conversation, "one"))
    await asyncio.sleep(0.2)
    second = asyncio.create_task(rig.turn(conversation, "two"))
    first_events, second_events = await asyncio.gather(first, second)
    assert text_of(first_events) == "first answer" and text_of(second_events) == "second answer to two"
    assert [m.content for m in await rig.store.history(conversation.id)] == [
        "one", "first answer", "two", "second answer to two"]


async def test_thinking_is_asked_for_when_configured(make_rig: Any) -> None:
    rig: AgentRig = await make_rig(ollama_think=True)
    rig.ollama.script(Reply.text("The answer.", thinking="Let me think."))
    events = await rig.turn(await rig.conversation(), "think first")
    assert rig.ollama.chat_requests[-1].think is True
    assert any(type(e).__name__ == "ThinkingDelta" for e in events) and text_of(events) == "The answer."
