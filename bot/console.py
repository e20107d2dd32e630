"""`python -m bot console`: the same agent core in a terminal, for trying it without Discord.

Type a message and press Enter; Ctrl-C cancels a running turn, Ctrl-D (or /quit) leaves.
Notifications for the console user (the agent's notify tool, or `notify` run inside the VM) are
printed as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TextIO

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
from bot.agent.loop import Agent
from bot.agent.text import human_size, took
from bot.store import Conversation, Store

CONSOLE_USER_ID = 0
NOTIFY_POLL_S = 0.5


class ConsoleRenderer:
    """Agent events -> plain terminal text."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._at_line_start = True

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        if text:
            self._at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        self.write(("" if self._at_line_start else "\n") + text + "\n")

    def render(self, event: AgentEvent) -> None:
        match event:
            case TextDelta(text=text):
                self.write(text)
            case Started() | ThinkingDelta():
                pass  # nothing to show: the text follows
            case ToolStart(name=name, arguments=args, step=step, max_steps=max_steps):
                shown = args.get("command") or args.get("path") or args.get("text") or ""
                self.line(f"▶ {name}  {shown}   (step {step}/{max_steps})")
            case ToolOutput(text=text):
                self.write(text)
            case ToolEnd(ok=ok, summary=summary, duration_s=duration):
                self.line(f"{'✓' if ok else '✗'} {summary} · {duration:.1f} s")
            case FileAttached(filename=filename, data=data):
                self.line(f"📎 {filename} · {human_size(len(data))}")
            case NotificationQueued(text=text):
                self.line(f"🔔 queued: {text}")
            case Done(steps=steps, tokens=tokens, duration_s=duration):
                self.line(f"✅ done · {steps} steps · {tokens:,} tokens · {took(duration)}")
            case Failed(message=message, cancelled=cancelled):
                self.line("⏹ cancelled" if cancelled else f"❌ failed: {message}")


async def print_notifications(store: Store, renderer: ConsoleRenderer, owner_id: int) -> None:
    """Show the console user's queued notifications (they have no DM to go to)."""
    while True:
        for item in await store.due_notifications(limit=20):
            if item.owner_id == owner_id:
                renderer.line(f"🔔 {item.text}")
                await store.mark_delivered(item.id, "console")
        await asyncio.sleep(NOTIFY_POLL_S)


async def read_line(stream: TextIO) -> str | None:
    line = await asyncio.to_thread(stream.readline)
    return line if line else None  # "" is end of input


async def run_turn_cancellable(agent: Agent, conversation: Conversation, text: str,
                               renderer: ConsoleRenderer) -> None:
    """One turn; SIGINT (Ctrl-C) cancels it instead of ending the program."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, agent.cancel, conversation.id)
    try:
        async for event in agent.run_turn(conversation, text):
            renderer.render(event)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


async def run_console(agent: Agent, store: Store, *, owner_id: int = CONSOLE_USER_ID,
                      stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    renderer = ConsoleRenderer(stdout)
    key = agent.vms.key_for(owner_id)
    conversation = await store.get_or_create_conversation("console", f"console-{owner_id}", owner_id,
                                                          key.scope, title="console")
    renderer.line(f"Agent console · model {agent.model.model} · VM {agent.vms.container_name(key)}. "
                  "Ctrl-C cancels a turn, Ctrl-D quits.")
    notifier = asyncio.create_task(print_notifications(store, renderer, owner_id))
    try:
        while True:
            renderer.write("> ")
            line = await read_line(stdin)
            if line is None or line.strip() == "/quit":
                renderer.line("bye")
                return
            if line.strip():
                await run_turn_cancellable(agent, conversation, line.strip(), renderer)
    finally:
        notifier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await notifier
