"""StreamRenderer: a turn's events -> Discord messages in a thread or DM.

Messages are "slots" posted in order: the task header (an embed with a Cancel button), parts of
the model's text, and a card per tool call. Slots change as events arrive; a flusher sends what
changed, at most about once a second per message and within the channel's budget (ChannelPacer),
so a stream never trips Discord's rate limit. Mentions are disabled in everything sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import discord

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
from bot.agent.text import human_size, took
from bot.chunking import DISCORD_LIMIT, close_fences, split_markdown
from bot.errors import DeliveryFailed
from bot.pacing import ChannelPacer

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
EDIT_INTERVAL_S = 1.0
HEADER_INTERVAL_S = 10.0
TYPING_INTERVAL_S = 8.0
CARD_DELAY_S = 0.7
CARD_LINES = 10
MAX_FILES = 10


@dataclass
class Slot:
    """One message: what it should say, and what Discord shows now."""

    content: str = ""
    embed: discord.Embed | None = None
    view: discord.ui.View | None = None
    message: discord.Message | None = None
    sent: tuple[str, object] | None = None
    last_sent: float = 0.0
    interval: float = EDIT_INTERVAL_S
    urgent: bool = False  # a change worth showing within EDIT_INTERVAL_S even if `interval` is longer
    not_before: float = 0.0  # post no earlier (a fast tool's card is posted once, already finished)

    def wanted(self) -> tuple[str, object]:
        return (self.content, (self.embed.to_dict() if self.embed else None, self.view is not None))


@dataclass
class ToolCard:
    name: str
    shown: str
    step: str
    lines: list[str] = field(default_factory=list)
    partial: str = ""
    total_lines: int = 0
    end: str = ""

    def add(self, text: str) -> None:
        pieces = (self.partial + text).split("\n")
        self.partial = pieces.pop()
        self.total_lines += len(pieces)
        self.lines = (self.lines + [p[:180] for p in pieces])[-CARD_LINES:]

    def render(self) -> str:
        lines = self.lines + ([self.partial[:180]] if self.partial else [])
        head = f"▶ **{self.name}**  `{self.shown}`  · {self.step}"
        end = "\n" + self.end if self.end else ""
        while True:  # the oldest lines give way, so that the closing fence and the end line fit
            hidden = self.total_lines + bool(self.partial) - len(lines)
            body = ("\n".join(lines)).replace("```", "ˋˋˋ")
            out = head
            if body:
                out += "\n```\n" + (f"… {hidden} lines …\n" if hidden > 0 else "") + body + "\n```"
            if len(out) + len(end) <= DISCORD_LIMIT or not lines:
                return (out + end)[:DISCORD_LIMIT]
            lines = lines[1:]


def shown_argument(arguments: dict[str, object]) -> str:
    value = str(arguments.get("command") or arguments.get("path") or arguments.get("text") or "")
    value = " ".join(value.split())
    return (value[:150] + "…" if len(value) > 150 else value).replace("`", "ˋ") or " "


class StreamRenderer:
    """Feed it a turn's events; `finish()` sends the final state, the footer and the files."""

    def __init__(self, channel: discord.abc.Messageable, channel_id: int, pacer: ChannelPacer, *,
                 upload_limit: int, header: Callable[[str], tuple[discord.Embed, discord.ui.View | None]]
                 | None = None) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.pacer = pacer
        self.upload_limit = upload_limit
        self.make_header = header
        self.slots: list[Slot] = []
        self.header: Slot | None = None
        self.text_run: list[Slot] = []  # slots holding the parts of the current text
        self.text = ""
        self.cards: dict[int, tuple[ToolCard, Slot]] = {}
        self.files: list[FileAttached] = []
        self.step = ""
        self.final = False
        self._dirty = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._last_typing = 0.0
        self._header_key: tuple[str, str] = ("", "")

    async def start(self) -> None:
        if self.make_header is not None:
            self.header = self._slot(interval=HEADER_INTERVAL_S)
            self.set_state("queued")
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"render-{self.channel_id}")
        await self._wait_posted(self.header)

    def set_state(self, state: str) -> None:
        """Rebuild the header; a new state or step is shown promptly, the clock every HEADER_INTERVAL_S."""
        if self.header is not None and self.make_header is not None:
            if (state, self.step) != self._header_key:
                self._header_key = (state, self.step)
                self.header.urgent = True
            self.header.embed, self.header.view = self.make_header(state)
            self._dirty.set()

    def _slot(self, content: str = "", interval: float = EDIT_INTERVAL_S) -> Slot:
        slot = Slot(content=content, interval=interval)
        self.slots.append(slot)
        self._dirty.set()
        return slot

    async def feed(self, event: AgentEvent) -> None:
        match event:
            case Started():
                self.set_state("running")
            case TextDelta(text=text):
                self._add_text(text)
            case ThinkingDelta():
                await self._typing()
            case ToolStart(call_id=call_id, name=name, arguments=arguments, step=step, max_steps=max_steps):
                self.text_run, self.text = [], ""  # text after the card goes below it
                self.step = f"step {step}/{max_steps}"
                card = ToolCard(name, shown_argument(arguments), self.step)
                slot = self._slot(card.render())
                slot.not_before = time.monotonic() + CARD_DELAY_S
                self.cards[call_id] = (card, slot)
                self.set_state("running")
            case ToolOutput(call_id=call_id, text=text) if call_id in self.cards:
                card, slot = self.cards[call_id]
                card.add(text)
                slot.content = card.render()
                self._dirty.set()
            case ToolEnd(call_id=call_id, ok=ok, summary=summary, duration_s=duration) if call_id in self.cards:
                card, slot = self.cards[call_id]
                card.end = f"{'✓' if ok else '✗'} {summary} · {duration:.1f} s"
                slot.content, slot.not_before = card.render(), 0.0
                self._dirty.set()
            case FileAttached():
                self.files.append(event)
            case NotificationQueued(text=text):
                self._add_text(f"\n-# 🔔 notification queued: {text[:200]}\n")
            case _:
                pass  # Done and Failed are the caller's to turn into a footer

    def _add_text(self, text: str) -> None:
        self.text += text
        parts = split_markdown(self.text, DISCORD_LIMIT - 40)
        while len(self.text_run) < len(parts):
            self.text_run.append(self._slot())
        for slot, part in zip(self.text_run, parts):
            slot.content = part
        self._dirty.set()

    async def _typing(self) -> None:
        now = time.monotonic()
        if now - self._last_typing >= TYPING_INTERVAL_S:
            self._last_typing = now
            with contextlib.suppress(discord.HTTPException):
                await self.channel.typing()

    async def finish(self, footer: str, state: str) -> None:
        """Send everything still pending, then the files, with the footer on the last message."""
        self.final = True
        self._dirty.set()
        if self._flusher is not None:
            await self._flusher  # the words and cards as they ended
        if self.files:
            await self._send_files(footer)
        else:
            last = self.text_run[-1] if self.text_run else None
            closed = close_fences(last.content) if last is not None else ""  # the footer goes below the code
            if last is not None and len(closed) + len(footer) + 2 <= DISCORD_LIMIT:
                last.content = f"{closed}\n\n{footer}"
            else:
                self._slot(footer)
        self.set_state(state)
        self._dirty.set()  # without a header, nothing else marks the footer or the last part as changed
        await self._flush_loop()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._flush_once()
            if self.final and all(s.sent == s.wanted() for s in self.slots):
                return
            if any(s.sent != s.wanted() for s in self.slots):
                await asyncio.sleep(0.2)  # come back for slots still inside their edit interval
                self._dirty.set()

    async def _flush_once(self) -> None:
        if self.header is not None and self._header_key[0] == "running" and not self.final:
            self.set_state("running")  # the elapsed clock moves
        # The header (state, clock) matters least once it is posted: the words and cards go first.
        ordered = [s for s in self.slots if s is not self.header or s.message is None]
        if self.header is not None and self.header.message is not None:
            ordered.append(self.header)
        for slot in ordered:
            if slot.sent == slot.wanted():
                continue
            now = time.monotonic()
            if slot.message is None and not self.final and now < slot.not_before:
                break  # later slots must not be posted above this one
            since = now - slot.last_sent
            due = slot.message is None or self.final or since >= slot.interval or (
                slot.urgent and since >= EDIT_INTERVAL_S)
            if not due:
                continue
            if slot is self.header and not self.final and self.pacer.free(self.channel_id) < 2:
                continue  # the header's clock and step can wait; keep the budget for the words
            try:
                async with self.pacer.slot(self.channel_id):
                    # Snapshot once the budget allows: what is sent is what is recorded as sent.
                    content, embed, view, wanted = slot.content, slot.embed, slot.view, slot.wanted()
                    if slot is not self.header:
                        content = close_fences(content)
                    if slot.message is None:
                        slot.message = await self.channel.send(content=content or None,
                                                               embed=embed or discord.utils.MISSING,
                                                               view=view or discord.utils.MISSING,
                                                               allowed_mentions=NO_MENTIONS)
                    else:
                        slot.message = await slot.message.edit(content=content or None, embed=embed,
                                                               view=view, allowed_mentions=NO_MENTIONS)
            except (discord.HTTPException, OSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("could not update a message in %s: %r", self.channel_id, exc)  # the next change retries
            slot.sent, slot.last_sent, slot.urgent = wanted, time.monotonic(), False

    async def _wait_posted(self, slot: Slot | None) -> None:
        """Wait until the slot's first send was tried; DeliveryFailed if it could not be posted."""
        while slot is not None and slot.sent is None and self._flusher is not None and not self._flusher.done():
            await asyncio.sleep(0.02)
        if slot is not None and slot.message is None:
            raise DeliveryFailed("I could not post in this thread: check that I may send messages there.")

    async def _send_files(self, footer: str) -> None:
        fitting = [f for f in self.files if len(f.data) <= self.upload_limit]
        notes = [f"📎 {f.filename} is too large for Discord ({human_size(len(f.data))} > "
                 f"{human_size(self.upload_limit)}): get it with /download path: {f.path}"
                 for f in self.files if len(f.data) > self.upload_limit]
        if len(fitting) > MAX_FILES:
            fitting = [FileAttached("", "files.zip", zip_files(fitting))]
        captions = [f"📎 {f.filename} · {human_size(len(f.data))}" for f in fitting]
        files = [discord.File(io.BytesIO(f.data), filename=f.filename) for f in fitting]
        try:
            async with self.pacer.slot(self.channel_id):
                await self.channel.send(content="\n".join(captions + notes + ["", footer])[:DISCORD_LIMIT], files=files,
                                        allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            log.warning("could not attach files in %s: %s", self.channel_id, exc)
            async with self.pacer.slot(self.channel_id):
                await self.channel.send(f"📎 The files could not be attached ({exc.text or exc}).\n\n{footer}",
                                        allowed_mentions=NO_MENTIONS)


def zip_files(files: list[FileAttached]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.writestr(f.filename, f.data)
    return buffer.getvalue()


def footer_for(event: Done | Failed, who_cancelled: str = "") -> tuple[str, str]:
    """The last line of a turn and the header's final state."""
    if isinstance(event, Done):
        return f"✅ done · {event.steps} steps · {event.tokens:,} tokens · {took(event.duration_s)}", "done"
    if event.interrupted:
        return ("⚠ interrupted: the bot restarted. A command may still run in the VM: Cancel stops it.",
                "interrupted")
    if event.cancelled:
        return f"⏹ cancelled{' by ' + who_cancelled if who_cancelled else ''}", "cancelled"
    return f"❌ failed: {event.message}", "failed"
