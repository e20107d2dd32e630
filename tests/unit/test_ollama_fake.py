"""The Ollama double, checked with the real `ollama.AsyncClient` (and raw HTTP for wire details)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import aiohttp
import httpx
import ollama
import pytest

from tests.fakes.ollama_server import (
    Chunk,
    FakeOllama,
    ModelSpec,
    RecordedRequest,
    Reply,
    ToolCall,
    estimate_prompt_tokens,
    refused_url,
)

MODEL = "qwen3:4b"
USER = [{"role": "user", "content": "hi"}]
EXEC_TOOL = {"type": "function", "function": {
    "name": "exec", "description": "Run a shell command",
    "parameters": {"type": "object", "required": ["command"],
                   "properties": {"command": {"type": "string", "description": "the command"}}}}}
NO_EXTRAS = ModelSpec("gemma3:1b", capabilities=("completion",), family="gemma3")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOllama) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=fake.url) as ollama_client:
        yield ollama_client


async def collect(client: ollama.AsyncClient, **kwargs: Any) -> list[ollama.ChatResponse]:
    kwargs.setdefault("messages", USER)
    return [part async for part in await client.chat(kwargs.pop("model", MODEL), stream=True, **kwargs)]


async def raw_lines(fake: FakeOllama, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """POST /api/chat without the client: the content type and every decoded line."""
    async with aiohttp.ClientSession() as session, session.post(f"{fake.url}/api/chat",
                                                                json=body) as response:
        text = await response.text()
        return response.headers["Content-Type"], [json.loads(line) for line in text.splitlines()]


def all_tool_calls(parts: list[ollama.ChatResponse]) -> list[ollama.Message.ToolCall]:
    return [call for part in parts for call in part.message.tool_calls or []]


async def test_streamed_text_arrives_in_order_with_pacing(fake: FakeOllama,
                                                         client: ollama.AsyncClient) -> None:
    fake.script(Reply.text("Hello ", "world", "!", delay=0.1))
    arrivals: list[tuple[float, ollama.ChatResponse]] = []
    async for part in await client.chat(MODEL, messages=USER, stream=True):
        arrivals.append((time.monotonic(), part))
    parts = [part for _, part in arrivals]
    assert [p.message.content for p in parts] == ["Hello ", "world", "!", ""]
    assert [p.done for p in parts] == [False, False, False, True]
    gaps = [later - earlier for (earlier, _), (later, _) in zip(arrivals, arrivals[1:], strict=False)]
    assert all(gap >= 0.08 for gap in gaps), gaps
    final = parts[-1]
    assert final.done_reason == "stop" and final.model == MODEL
    assert final.prompt_eval_count == estimate_prompt_tokens(fake.chat_requests[0].body)
    assert final.eval_count and final.eval_count >= 3
    assert final.total_duration and final.eval_duration
    assert final.total_duration >= final.eval_duration >= 0.2e9
    assert fake.remaining == 0 and fake.problems == []


async def test_wire_lines_have_ollamas_exact_shape(fake: FakeOllama) -> None:
    fake.script(Reply(chunks=[Chunk(thinking="hmm"), Chunk(content="<b>&"),
                              Chunk(tool_calls=[ToolCall("exec", {"command": "ls"})])]))
    content_type, lines = await raw_lines(fake, {"model": MODEL, "messages": USER, "tools": [EXEC_TOOL]})
    assert content_type == "application/x-ndjson"
    assert [line["message"] for line in lines[:2]] == [
        {"role": "assistant", "content": "", "thinking": "hmm"}, {"role": "assistant", "content": "<b>&"}]
    call = lines[2]["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and len(call["id"]) == 13
    assert call["function"] == {"index": 0, "name": "exec", "arguments": {"command": "ls"}}
    final = lines[-1]
    assert final["done"] is True and final["message"] == {"role": "assistant", "content": ""}
    assert set(final) == {"model", "created_at", "message", "done", "done_reason", "total_duration",
                          "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                          "eval_duration"}
    assert all(line["created_at"].endswith("Z") and line["model"] == MODEL for line in lines)


async def test_thinking_chunks_come_before_the_answer(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.script(Reply.text("42", thinking=["Let me ", "think."]), Reply.text("42", thinking="hidden"))
    parts = await collect(client, think=True)
    assert [p.message.thinking for p in parts] == ["Let me ", "think.", None, None]
    assert [p.message.content for p in parts] == ["", "", "42", ""]
    quiet = await collect(client, think=False)  # a thinking model asked not to think emits no thinking
    assert all(p.message.thinking is None for p in quiet)
    assert [r.think for r in fake.chat_requests] == [True, False]


async def test_tool_call_in_a_middle_chunk(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    scripted = ToolCall("exec", {"command": "ls -la"})
    fake.script(Reply(chunks=[Chunk("Let me look."), Chunk(tool_calls=[scripted]), Chunk(" Done.")]))
    parts = await collect(client, tools=[EXEC_TOOL])
    assert parts[1].message.tool_calls and not parts[-1].message.tool_calls
    [call] = all_tool_calls(parts)
    assert call.function.name == "exec" and call.function.arguments == {"command": "ls -la"}
    assert "".join(p.message.content or "" for p in parts) == "Let me look. Done."


async def test_tool_calls_in_the_done_chunk(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.script(Reply(chunks=[Chunk(thinking="two files"), Chunk(content="Reading")],
                      final_tool_calls=[ToolCall("read_file", {"path": "a.txt"}),
                                        ToolCall("read_file", {"path": "b.txt", "max_bytes": 10})]))
    parts = await collect(client, tools=[EXEC_TOOL])
    assert parts[-1].done and all_tool_calls(parts) == list(parts[-1].message.tool_calls or [])
    assert [c.function.arguments for c in all_tool_calls(parts)] == [
        {"path": "a.txt"}, {"path": "b.txt", "max_bytes": 10}]


async def test_tool_result_round_trip_is_recorded(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    async def echo(request: RecordedRequest) -> Reply:
        await asyncio.sleep(0)
        return Reply.text(f"The output was {request.messages[-1]['content']!r}")

    fake.script(Reply.tool_call("exec", {"command": "ls"}, before=["Listing."]), Reply.dynamic(echo))
    history: list[Any] = [{"role": "system", "content": "You are terse."}, *USER]
    parts = await collect(client, messages=history, tools=[EXEC_TOOL], options={"num_ctx": 8192}, think=True)
    [call] = all_tool_calls(parts)
    history += [ollama.Message(role="assistant", content="Listing.", tool_calls=[call]),
                {"role": "tool", "content": "a.txt\n", "tool_name": call.function.name}]
    answer = await client.chat(MODEL, messages=history, tools=[EXEC_TOOL], options={"num_ctx": 8192})
    assert answer.message.content == "The output was 'a.txt\\n'"
    sent = fake.chat_requests[1]
    assert sent.roles == ["system", "user", "assistant", "tool"]
    call_sent = {"function": {"name": "exec", "arguments": {"command": "ls"}}}
    assert sent.messages[2] == {"role": "assistant", "content": "Listing.", "tool_calls": [call_sent]}
    assert sent.messages[3] == {"role": "tool", "content": "a.txt\n", "tool_name": "exec"}
    assert sent.tool_names == ["exec"] and sent.tools[0] == EXEC_TOOL
    assert sent.options == {"num_ctx": 8192} and sent.stream is False
    assert fake.chat_requests[0].think is True and sent.think is None


async def test_non_streamed_chat_aggregates_the_reply(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.script(Reply(chunks=[Chunk(thinking="a"), Chunk(thinking="b"), Chunk("Hel"), Chunk("lo")],
                      final_tool_calls=[ToolCall("notify", {"text": "hi"})],
                      prompt_eval_count=1234, eval_count=56, done_reason="length"))
    response = await client.chat(MODEL, messages=USER, tools=[EXEC_TOOL])
    assert response.done and response.done_reason == "length"
    assert (response.message.content, response.message.thinking) == ("Hello", "ab")
    assert [c.function.name for c in response.message.tool_calls or []] == ["notify"]
    assert (response.prompt_eval_count, response.eval_count) == (1234, 56)


async def test_list_show_and_pull() -> None:
    fake = FakeOllama([NO_EXTRAS], pullable=[ModelSpec("qwen3:8b", parameter_size="8.2B")])
    async with fake, ollama.AsyncClient(host=fake.url) as local:
            assert [m.model for m in (await local.list()).models] == ["gemma3:1b"]
            shown = await local.show("gemma3:1b")
            assert shown.capabilities == ["completion"] and shown.modelinfo
            assert shown.modelinfo["general.architecture"] == "gemma3" and shown.details
            statuses = [p.status async for p in await local.pull("qwen3:8b", stream=True)]
            assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
            assert any(s and s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
            assert (await local.pull("gemma3:1b")).status == "success"
            assert [m.model for m in (await local.list()).models] == ["gemma3:1b", "qwen3:8b"]
            assert (await local.show("qwen3:8b")).modelinfo["general.parameter_count"] == 8_200_000_000
            with pytest.raises(ollama.ResponseError) as streamed_failure:
                [p async for p in await local.pull("nope", stream=True)]
            assert streamed_failure.value.status_code == -1
            with pytest.raises(ollama.ResponseError, match="file does not exist") as failure:
                await local.pull("nope")
            assert failure.value.status_code == 500


async def test_unknown_model_is_404(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.script("never sent")
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as failure:
            await (collect(client, model="nope") if stream else client.chat("nope", messages=USER))
        assert (failure.value.status_code, failure.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as shown:
        await client.show("nope:7b")
    assert (shown.value.status_code, shown.value.error) == (404, "model 'nope:7b' not found")
    assert fake.remaining == 1  # refused requests never reach the model


async def collect_from(fake: FakeOllama, model: str, **kwargs: Any) -> list[ollama.ChatResponse]:
    async with ollama.AsyncClient(host=fake.url) as client:
        return [p async for p in await client.chat(model, messages=USER, stream=True, **kwargs)]


async def test_tools_on_a_model_without_tools_is_400() -> None:
    async with FakeOllama([NO_EXTRAS, ModelSpec("tiny", capabilities=("completion",))]) as fake:
        for model, full in (("gemma3:1b", "gemma3:1b"), ("tiny", "tiny:latest")):
            with pytest.raises(ollama.ResponseError) as failure:
                await collect_from(fake, model, tools=[EXEC_TOOL])
            assert failure.value.status_code == 400
            assert failure.value.error == f"registry.ollama.ai/library/{full} does not support tools"
        fake.script("plain")
        assert (await collect_from(fake, "gemma3:1b"))[0].message.content == "plain"


async def test_think_on_a_non_thinking_model_is_400() -> None:
    async with FakeOllama([NO_EXTRAS]) as fake:
        for think in (True, "high"):
            with pytest.raises(ollama.ResponseError) as failure:
                await collect_from(fake, "gemma3:1b", think=think)
            assert (failure.value.status_code, failure.value.error) == (
                400, '"gemma3:1b" does not support thinking')
        fake.script("fine")
        assert (await collect_from(fake, "gemma3:1b", think=False))[0].message.content == "fine"


async def test_midstream_error_raises_after_partial_output(fake: FakeOllama,
                                                           client: ollama.AsyncClient) -> None:
    fake.script(Reply.error_midstream("model runner crashed", after=["partial "]))
    received: list[str] = []
    with pytest.raises(ollama.ResponseError) as failure:
        async for part in await client.chat(MODEL, messages=USER, stream=True):
            received.append(part.message.content or "")
    assert received == ["partial "]
    assert (failure.value.error, failure.value.status_code) == ("model runner crashed", -1)


async def test_http_error_reply(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.script(Reply.http_error(503, "server busy"))
    with pytest.raises(ollama.ResponseError) as failure:
        await collect(client)
    assert (failure.value.status_code, failure.value.error) == (503, "server busy")


async def test_garbage_line_is_a_json_decode_error(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    fake.script(Reply.garbage_line(after=["ok"]), Reply.garbage_line(line=""))
    received: list[str] = []
    with pytest.raises(json.JSONDecodeError):
        async for part in await client.chat(MODEL, messages=USER, stream=True):
            received.append(part.message.content or "")
    assert received == ["ok"]
    with pytest.raises(json.JSONDecodeError):
        await collect(client)


async def test_hang_makes_a_client_timeout_fire(fake: FakeOllama) -> None:
    fake.script(Reply.hang(), Reply.hang(after=["first"]), Reply.hang())
    async with ollama.AsyncClient(host=fake.url, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await collect(client)
        received: list[str] = []
        with pytest.raises(httpx.ReadTimeout):
            async for part in await client.chat(MODEL, messages=USER, stream=True):
                received.append(part.message.content or "")
        assert received == ["first"]
        with pytest.raises(httpx.ReadTimeout):
            await client.chat(MODEL, messages=USER)
        assert 0.9 <= time.monotonic() - started < 3
    stopping = time.monotonic()
    await fake.stop()  # hanging handlers do not hold the server up
    assert time.monotonic() - stopping < 1


async def test_empty_script_answers_500_and_is_recorded(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as failure:
        await collect(client)
    assert failure.value.status_code == 500 and "no scripted reply" in failure.value.error
    assert fake.unexpected == fake.chat_requests and len(fake.problems) == 1
    with pytest.raises(AssertionError, match="script empty"):
        fake.assert_clean()


async def test_scripted_tool_call_without_offered_tools_is_a_problem(fake: FakeOllama,
                                                                    client: ollama.AsyncClient) -> None:
    fake.script(Reply.tool_call("exec", {"command": "ls"}), "left over")
    await collect(client)
    assert fake.problems and "offered no tools" in fake.problems[0]
    with pytest.raises(AssertionError, match="1 scripted turn"):
        fake.assert_clean(allow_leftover=False)


async def test_client_going_away_mid_stream_is_recorded(fake: FakeOllama,
                                                        client: ollama.AsyncClient) -> None:
    fake.script(Reply.text(*["token "] * 50, delay=0.02), "next turn")
    stream = cast(AsyncGenerator[ollama.ChatResponse, None],
                  await client.chat(MODEL, messages=USER, stream=True))
    async for part in stream:
        assert part.message.content == "token "
        break
    await stream.aclose()
    for _ in range(100):
        if fake.disconnected:
            break
        await asyncio.sleep(0.02)
    assert fake.disconnected == fake.chat_requests[:1]
    assert (await client.chat(MODEL, messages=USER)).message.content == "next turn"


async def test_empty_messages_only_load_the_model(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    response = await client.chat(MODEL, messages=[])
    assert response.done and response.done_reason == "load" and fake.problems == []


async def test_connection_refused_and_restart(fake: FakeOllama, client: ollama.AsyncClient) -> None:
    async with ollama.AsyncClient(host=refused_url()) as nowhere:
        with pytest.raises(ConnectionError):
            await nowhere.chat(MODEL, messages=USER)
        with pytest.raises(httpx.ConnectError):  # the client does not translate errors of a stream
            await collect(nowhere)
    url = fake.url
    await fake.stop()
    with pytest.raises(ConnectionError):
        await client.list()
    await fake.start()
    fake.script("back")
    assert fake.url == url and (await client.chat(MODEL, messages=USER)).message.content == "back"
    await fake.wait_for_requests(1)
