"""bot/render.py: StreamRenderer turns a turn's events into Discord messages, within Discord's limits.

Driven with agent events against an in-memory channel that records every send and edit (with
timestamps), through a ChannelPacer with a short window.
"""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import discord
import pytest

from bot import render
from bot.agent.events import (
    AgentEvent,
    Done,
    Failed,
    FileAttached,
    NotificationQueued,
    Started,
    TextDelta,
    ThinkingDelta,
    ToolEnd,
    ToolOutput,
    ToolStart,
)
from bot.chunking import DISCORD_LIMIT
from bot.errors import DeliveryFailed
from bot.pacing import ChannelPacer
from bot.render import StreamRenderer, footer_for
from tests.unit.test_chunking import open_fence
from tests.unit.test_pacing import max_in_window

CHANNEL_ID = 4242
RATE, PER_S = 5, 0.5
UPLOAD_LIMIT = 10_000


@dataclass
class Call:
    at: float
    kind: str  # "send" or "edit"
    message: FakeMessage
    kwargs: dict[str, Any]


@dataclass
class FakeMessage:
    channel: FakeChannel
    id: int
    content: str | None
    embed: discord.Embed | None = None
    files: list[discord.File] = field(default_factory=list)

    async def edit(self, **kwargs: Any) -> FakeMessage:
        self.channel.record("edit", self, kwargs)
        if "content" in kwargs:
            self.content = kwargs["content"]
        if "embed" in kwargs:
            self.embed = kwargs["embed"]
        return self


class FakeChannel:
    """A Messageable that keeps what it was sent."""

    def __init__(self) -> None:
        self.messages: list[FakeMessage] = []
        self.calls: list[Call] = []
        self.typing_count = 0

    def record(self, kind: str, message: FakeMessage, kwargs: dict[str, Any]) -> None:
        self.calls.append(Call(time.monotonic(), kind, message, kwargs))

    async def send(self, content: str | None = None, **kwargs: Any) -> FakeMessage:
        message = FakeMessage(self, len(self.messages) + 1, content, kwargs.get("embed"), kwargs.get("files") or [])
        self.record("send", message, {"content": content, **kwargs})
        self.messages.append(message)
        return message

    async def typing(self) -> None:
        self.typing_count += 1

    def sends_of(self, message: FakeMessage) -> list[Call]:
        return [c for c in self.calls if c.message is message]

    def text(self) -> str:
        return "\n".join(m.content or "" for m in self.messages)


def assert_within_discord_rules(channel: FakeChannel) -> None:
    """What Discord (and the Discord double) would reject or render badly, on every call."""
    for call in channel.calls:
        mentions = call.kwargs.get("allowed_mentions")
        assert isinstance(mentions, discord.AllowedMentions), f"{call.kind} without allowed_mentions"
        assert mentions.to_dict() == discord.AllowedMentions.none().to_dict()
        assert not (mentions.everyone or mentions.users or mentions.roles or mentions.replied_user)
        content = call.kwargs.get("content")
        if content is not None:
            assert len(content) <= DISCORD_LIMIT, f"{call.kind} of {len(content)} characters"
            assert open_fence(content) is None, f"{call.kind} leaves a code fence open:\n{content}"
        assert content or call.kwargs.get("embed") or call.kwargs.get("files"), "an empty message"
    assert max_in_window([c.at for c in channel.calls], PER_S) <= RATE, "the channel's budget was exceeded"


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Any]]:
    channels: list[FakeChannel] = []

    async def make(header: Callable[[str], tuple[discord.Embed, discord.ui.View | None]] | None = None,
                   upload_limit: int = UPLOAD_LIMIT) -> tuple[StreamRenderer, FakeChannel]:
        channel = FakeChannel()
        channels.append(channel)
        renderer = StreamRenderer(channel, CHANNEL_ID, ChannelPacer(RATE, PER_S),  # type: ignore[arg-type]
                                  upload_limit=upload_limit, header=header)
        await renderer.start()
        return renderer, channel

    yield make
    for channel in channels:  # every test: nothing Discord would refuse was sent
        assert_within_discord_rules(channel)


async def feed(renderer: StreamRenderer, *events: AgentEvent, pause: float = 0.0) -> None:
    for event in events:
        await renderer.feed(event)
        await asyncio.sleep(pause)


def done(steps: int = 1) -> Done:
    return Done(steps=steps, tokens=1234, duration_s=3.2, text="")


async def finish(renderer: StreamRenderer, event: Done | Failed | None = None, who: str = "") -> str:
    footer, state = footer_for(event or done(), who)
    async with asyncio.timeout(20):
        await renderer.finish(footer, state)
    return footer


def code_lines(n: int) -> list[str]:
    return [f"    total += values[{i}] * weight  # accumulate item {i} of the series" for i in range(n)]


async def test_long_text_becomes_several_messages_with_balanced_fences(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    body = code_lines(90)
    text = ("Here is the module you asked for:\n\n```python\ndef total(values, weight):\n    total = 0\n"
            + "\n".join(body) + "\n    return total\n```\n\nIt sums the weighted values. " + "Done. " * 50)
    assert len(text) > 2 * DISCORD_LIMIT
    await feed(renderer, Started(20))
    for start in range(0, len(text), 120):  # streamed in small deltas, flushed as it goes
        await feed(renderer, TextDelta(text[start:start + 120]), pause=0.01)
    footer = await finish(renderer)

    assert len(channel.messages) >= 3
    assert all(len(m.content or "") <= DISCORD_LIMIT for m in channel.messages)
    continued = [m.content or "" for m in channel.messages[1:-1]]
    assert all(c.startswith("```python\n") for c in continued), "the cut fence reopens with its language"
    shown = [line for m in channel.messages for line in (m.content or "").split("\n")]
    assert [line for line in shown if "accumulate item" in line] == body, "nothing lost or repeated at the cuts"
    assert (channel.messages[-1].content or "").endswith(footer)
    assert footer not in "\n".join(m.content or "" for m in channel.messages[:-1])
    assert any(c.kind == "edit" for c in channel.calls), "the text streamed by edits"


async def test_the_footer_is_outside_a_code_block_left_open(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    await feed(renderer, Started(20), TextDelta("Writing it:\n```python\nimport os\nprint(os.getcwd()"))
    footer = await finish(renderer, Failed("Ollama failed in the middle of the answer", steps=1))

    last = channel.messages[-1].content or ""
    assert last.endswith(footer) and footer.startswith("❌ failed: Ollama failed")
    assert "print(os.getcwd()" in last
    assert open_fence(last[:-len(footer)]) is None, "the footer must not render inside the code block"


async def test_a_fast_tool_card_is_posted_once_already_finished(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    await feed(renderer, Started(20), TextDelta("Let me check."), pause=0.05)
    await feed(renderer, ToolStart(1, "exec", {"command": "echo   hi\n && ls"}, 1, 20),
               ToolOutput(1, "stdout", "hi\napp.py\n"),
               ToolEnd(1, "exec", True, "exit 0", exit_code=0, reason="exit", duration_s=0.08), pause=0.05)
    await feed(renderer, TextDelta("All good."))
    footer = await finish(renderer)

    contents = [m.content or "" for m in channel.messages]
    assert contents[0] == "Let me check."
    card = channel.messages[1]
    assert channel.sends_of(card)[0].kind == "send" and len(channel.sends_of(card)) == 1, "posted once, never edited"
    assert (card.content or "").startswith("▶ **exec**  `echo hi && ls`  · step 1/20")
    assert "hi\napp.py" in (card.content or "")
    assert (card.content or "").endswith("✓ exit 0 · 0.1 s")
    assert contents[2] == f"All good.\n\n{footer}", "text after the card goes below it, with the footer"


async def test_a_slow_tool_card_shows_its_last_lines_and_the_end_line(rig: Callable[..., Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "CARD_DELAY_S", 0.05)
    renderer, channel = await rig()
    await feed(renderer, Started(20), ToolStart(1, "exec", {"command": "make test"}, 2, 20), pause=0.3)
    card = channel.messages[0]
    assert "make test" in (card.content or "") and "✗" not in (card.content or "")  # posted while it runs

    await feed(renderer, *[ToolOutput(1, "stderr", f"error line {i}\n") for i in range(25)], pause=0.0)
    await feed(renderer, ToolOutput(1, "stderr", "make: *** [test] Error 2"),
               ToolEnd(1, "exec", False, "exit 2", exit_code=2, reason="exit", duration_s=6.14))
    footer = await finish(renderer, Failed("the tests failed", steps=2))

    shown = card.content or ""
    assert len(channel.sends_of(card)) >= 2, "the running card was edited"
    assert "step 2/20" in shown
    assert "… 15 lines …" in shown  # 25 whole lines and the unfinished last one: the last 10 and it shown
    assert "error line 14" not in shown and all(f"error line {i}" in shown for i in range(15, 25))
    assert "make: *** [test] Error 2" in shown
    assert shown.endswith("✗ exit 2 · 6.1 s")
    assert channel.messages[-1].content == footer


async def test_a_card_with_long_command_and_long_lines_fits_and_keeps_its_end_line(
        rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    command = "pip install --user " + " ".join(f"package-number-{i}" for i in range(20))
    await feed(renderer, Started(20), ToolStart(1, "exec", {"command": command}, 1, 20))
    await feed(renderer, *[ToolOutput(1, "stdout", f"{i:02d} " + "Downloading " * 30 + "\n") for i in range(30)])
    await feed(renderer, ToolEnd(1, "exec", True, "exit 0", exit_code=0, reason="exit", duration_s=12.0))
    await finish(renderer)

    card = channel.messages[0].content or ""
    assert len(card) <= DISCORD_LIMIT
    assert card.endswith("✓ exit 0 · 12.0 s"), "the end line is the card's most important line"
    assert "29 Downloading" in card and card.count("Downloading") > 10  # the last lines, clipped to 180 chars
    assert "package-number-1 " in card and "…`" in card  # a long command is shortened


async def test_the_footer_of_a_turn_without_text_follows_the_cards(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    await feed(renderer, Started(20), ToolStart(1, "write_file", {"path": "app.py", "content": "x"}, 1, 20),
               ToolEnd(1, "write_file", True, "wrote app.py (1 B)", duration_s=0.01))
    footer = await finish(renderer, Failed("cancelled", cancelled=True), who="@alice")

    assert footer == "⏹ cancelled by @alice"
    assert [m.content for m in channel.messages][-1] == footer
    assert "`app.py`" in (channel.messages[0].content or "")
    assert (channel.messages[0].content or "").endswith("✓ wrote app.py (1 B) · 0.0 s")


async def test_files_are_posted_with_captions_and_the_footer(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    await feed(renderer, Started(20), TextDelta("Here are your files."),
               FileAttached("/workspace/app.py", "app.py", b"print('hi')\n"),
               FileAttached("/workspace/data.csv", "data.csv", b"a,b\n" * 600))
    footer = await finish(renderer)

    last = channel.messages[-1]
    assert [f.filename for f in last.files] == ["app.py", "data.csv"]
    assert last.files[0].fp.read() == b"print('hi')\n"
    assert (last.content or "").split("\n") == ["📎 app.py · 12 B", "📎 data.csv · 2.3 KB", "", footer]
    assert channel.messages[0].content == "Here are your files."
    assert sum(bool(m.files) for m in channel.messages) == 1


async def test_more_than_ten_files_are_zipped_into_one(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig(upload_limit=1_000_000)
    files = [FileAttached(f"/workspace/out/{i}.txt", f"{i}.txt", f"file {i}\n".encode()) for i in range(12)]
    await feed(renderer, Started(20), *files)
    await finish(renderer)

    (attached,) = channel.messages[-1].files
    assert attached.filename == "files.zip"
    with zipfile.ZipFile(io.BytesIO(attached.fp.read())) as archive:
        assert sorted(archive.namelist()) == sorted(f"{i}.txt" for i in range(12))
        assert archive.read("11.txt") == b"file 11\n"
    assert "files.zip" in (channel.messages[-1].content or "")


async def test_a_file_over_the_upload_limit_is_reported_with_a_download_hint(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig(upload_limit=1000)
    await feed(renderer, Started(20), FileAttached("/workspace/small.txt", "small.txt", b"ok"),
               FileAttached("/workspace/build/big.bin", "big.bin", b"\0" * 5000))
    footer = await finish(renderer)

    last = channel.messages[-1]
    assert [f.filename for f in last.files] == ["small.txt"]
    content = last.content or ""
    assert "big.bin is too large" in content and "/download path: /workspace/build/big.bin" in content
    assert content.endswith(footer)


async def test_a_file_discord_refuses_is_reported_and_the_footer_still_lands(rig: Callable[..., Any]) -> None:
    renderer, channel = await rig()
    original = channel.send

    async def send(content: str | None = None, **kwargs: Any) -> FakeMessage:
        if kwargs.get("files"):
            response = type("Response", (), {"status": 413, "reason": "Payload Too Large"})()
            raise discord.HTTPException(response, {"code": 40005, "message": "Request entity too large"})
        return await original(content, **kwargs)

    channel.send = send  # type: ignore[method-assign]
    await feed(renderer, Started(20), FileAttached("/workspace/a.bin", "a.bin", b"1234"))
    footer = await finish(renderer)
    last = channel.messages[-1].content or ""
    assert last.startswith("📎 The files could not be attached (Request entity too large)")
    assert last.endswith(footer)


async def test_header_embed_follows_the_state_and_nothing_mentions(rig: Callable[..., Any]) -> None:
    states: list[str] = []

    def header(state: str) -> tuple[discord.Embed, discord.ui.View | None]:
        states.append(state)
        return discord.Embed(title=f"Task #1 · {state}"), None

    renderer, channel = await rig(header=header)
    assert channel.messages[0].embed is not None, "start() returns once the header is posted"
    assert channel.messages[0].embed.title == "Task #1 · queued"
    await feed(renderer, Started(20), TextDelta("Hi @everyone and <@123>, see <@&456>."),
               NotificationQueued("server is up"), ThinkingDelta("hmm"))
    await finish(renderer)

    assert channel.messages[0].embed.title == "Task #1 · done"
    assert "running" in states
    assert "🔔 notification queued: server is up" in channel.text()
    assert channel.typing_count == 1  # thinking shows "typing…"
    # allowed_mentions=none on every send and edit is checked for every test by the fixture.
    assert len(channel.calls) >= 3 and {c.kind for c in channel.calls} == {"send", "edit"}


@pytest.mark.parametrize(("event", "who", "footer", "state"), [
    (Done(steps=7, tokens=3412, duration_s=72.4, text="ok"), "", "✅ done · 7 steps · 3,412 tokens · 1 min 12 s",
     "done"),
    (Done(steps=1, tokens=12, duration_s=4.26, text=""), "", "✅ done · 1 steps · 12 tokens · 4.3 s", "done"),
    (Failed("Ollama at http://ollama:11434 is not reachable", steps=2), "",
     "❌ failed: Ollama at http://ollama:11434 is not reachable", "failed"),
    (Failed("cancelled", cancelled=True), "@alice", "⏹ cancelled by @alice", "cancelled"),
    (Failed("cancelled", cancelled=True), "", "⏹ cancelled", "cancelled"),
    (Failed("shutting down", interrupted=True, cancelled=True), "", None, "interrupted"),
])
def test_footer_for(event: Done | Failed, who: str, footer: str | None, state: str) -> None:
    text, final_state = footer_for(event, who)
    assert final_state == state
    if footer is not None:
        assert text == footer
    else:
        assert text.startswith("⚠ interrupted: the bot restarted") and "Cancel" in text


class ForbiddenChannel(FakeChannel):
    """A thread the bot may not post in."""

    async def send(self, content: str | None = None, **kwargs: Any) -> FakeMessage:
        raise discord.Forbidden(FakeResponse(403), {"code": 50001, "message": "Missing Access"})


@dataclass
class FakeResponse:
    status: int
    reason: str = "Forbidden"


async def test_a_header_that_cannot_be_posted_fails_the_start_instead_of_hanging() -> None:
    renderer = StreamRenderer(ForbiddenChannel(), CHANNEL_ID, ChannelPacer(RATE, PER_S),  # type: ignore[arg-type]
                              upload_limit=UPLOAD_LIMIT, header=lambda state: (discord.Embed(title=state), None))
    with pytest.raises(DeliveryFailed, match="could not post in this thread"):
        await asyncio.wait_for(renderer.start(), 5)
    await asyncio.wait_for(renderer.finish("❌ failed", "failed"), 5)  # and it still ends
