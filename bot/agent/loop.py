"""run_turn(): one turn of a conversation, as a stream of events.

The model is asked, its tool calls run in the conversation's VM, their results go back as
`role: tool` messages, and so on until it answers without tools, MAX_STEPS is reached, or the
turn is cancelled. Every message is stored as it happens, so a restart loses nothing. One turn at
a time per conversation: a turn started meanwhile waits for the running one (FIFO).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import ollama

from bot.agent.events import AgentEvent, Done, Failed, Started, TextDelta, ThinkingDelta, ToolEnd, ToolStart
from bot.agent.model import ModelConfig, stream_chat
from bot.agent.prompt import TokenEstimator, system_prompt, trim_history
from bot.agent.tools import TOOL_SCHEMAS, ToolContext, run_tool
from bot.config import Settings
from bot.errors import BotError
from bot.store import Conversation, Store
from bot.vm.manager import VMKey, VMManager

log = logging.getLogger(__name__)

Emit = Callable[[AgentEvent], Awaitable[None]]

# Prints how many processes carrying MARKER in their environment it killed.
_KILL_MARKED = r"""python3 - <<'EOF'
import os, signal
killed = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if b"MARKER" in f.read().split(b"\0") and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    except (OSError, ValueError):
        pass
print(killed)
EOF"""


@dataclass
class _Turn:
    """The running tally of one turn."""

    conversation: Conversation
    emit: Emit
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    tokens: int = 0
    calls: int = 0
    unanswered: list[str] = field(default_factory=list)  # tool calls still waiting for a result

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class _Answer:
    content: str = ""
    thinking: str = ""
    tool_calls: list[ollama.Message.ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    eval_tokens: int = 0


class Agent:
    """Runs turns for every conversation; knows nothing of Discord."""

    def __init__(self, settings: Settings, store: Store, vms: VMManager, client: ollama.AsyncClient,
                 model: ModelConfig | None = None) -> None:
        self.settings = settings
        self.store = store
        self.vms = vms
        self.client = client
        self.model = model or ModelConfig(host=settings.ollama_host, model=settings.ollama_model,
                                          num_ctx=settings.ollama_num_ctx, think=settings.ollama_think,
                                          timeout_s=settings.ollama_timeout)
        self.estimator = TokenEstimator()
        self._locks: dict[int, asyncio.Lock] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self.shutting_down = False

    def vm_key(self, conversation: Conversation) -> VMKey:
        return VMKey(conversation.owner_id, conversation.vm_key)

    def is_running(self, conversation_id: int) -> bool:
        return conversation_id in self._running

    def interrupt_all(self) -> int:
        """The bot is stopping: end every turn, leaving the VMs' jobs running (Cancel after the
        restart stops them). Returns how many turns were interrupted."""
        self.shutting_down = True
        running = [task for task in self._running.values() if not task.done()]
        for task in running:
            task.cancel()
        return len(running)

    def cancel(self, conversation_id: int) -> bool:
        """Cancel the conversation's running turn (its running job is killed). False if none runs."""
        task = self._running.get(conversation_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def kill_leftovers(self, conversation: Conversation) -> int:
        """Kill what the conversation's commands left running in its VM (their exec environment
        carries AGENT_CONVERSATION). Used when a task is cancelled after a bot restart. A VM that
        is not running is not started for this."""
        key = self.vm_key(conversation)
        if (await self.vms.status(key)).state != "running":
            return 0
        marker = f"AGENT_CONVERSATION={conversation.id}"
        done = await (await self.vms.channel(key)).run(_KILL_MARKED.replace("MARKER", marker), session="admin")
        return int(done.stdout.strip() or 0)

    async def run_turn(self, conversation: Conversation, user_input: str) -> AsyncIterator[AgentEvent]:
        """Yield the turn's events; the last one is always Done or Failed."""
        lock = self._locks.setdefault(conversation.id, asyncio.Lock())
        async with lock:
            queue: asyncio.Queue[AgentEvent] = asyncio.Queue()
            worker = asyncio.create_task(self._work(conversation, user_input, queue.put))
            self._running[conversation.id] = worker
            try:
                while True:
                    event = await queue.get()
                    yield event
                    if isinstance(event, (Done, Failed)):
                        return
            finally:
                self._running.pop(conversation.id, None)
                if not worker.done():  # the consumer went away: stop the work too
                    worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)

    async def _work(self, conversation: Conversation, user_input: str, emit: Emit) -> None:
        turn = _Turn(conversation, emit)
        await emit(Started(self.settings.max_steps))
        try:
            with self.vms.activity(self.vm_key(conversation)):
                await self._converse(turn, user_input)
        except asyncio.CancelledError:
            if self.shutting_down:
                await asyncio.shield(self._close_unanswered(turn, "Interrupted: the bot restarted."))
                await emit(Failed("Interrupted: the bot restarted.", turn.steps, turn.tokens, turn.elapsed(),
                                  interrupted=True))
                return
            await asyncio.shield(self._close_unanswered(turn, "The user cancelled this before it finished."))
            await emit(Failed("Cancelled.", turn.steps, turn.tokens, turn.elapsed(), cancelled=True))
        except BotError as exc:
            await self._close_unanswered(turn, f"Not run: {exc.message}")
            await emit(Failed(exc.message, turn.steps, turn.tokens, turn.elapsed()))
        except Exception:
            log.exception("turn in conversation %s failed", conversation.id)
            await emit(Failed("Something went wrong inside the bot; the error is in its log.",
                              turn.steps, turn.tokens, turn.elapsed()))

    async def _converse(self, turn: _Turn, user_input: str) -> None:
        conversation = turn.conversation
        key = self.vm_key(conversation)
        memory = await self.store.get_memory(conversation.owner_id)
        history = [m.to_ollama() for m in await self.store.history(conversation.id)]
        system = ollama.Message(role="system", content=system_prompt(memory, self.vms.container_name(key)))
        await self.store.append_message(conversation.id, "user", user_input)
        current = [ollama.Message(role="user", content=user_input)]
        while turn.steps < self.settings.max_steps:
            turn.steps += 1
            messages = trim_history(system, history, current, self.model.num_ctx, self.estimator)
            answer = await self._ask(turn, messages)
            self.estimator.calibrate(messages, answer.prompt_tokens)
            assistant = ollama.Message(role="assistant", content=answer.content,
                                       thinking=answer.thinking or None, tool_calls=answer.tool_calls or None)
            await self.store.append_message(conversation.id, "assistant", answer.content,
                                            thinking=answer.thinking or None, tool_calls=answer.tool_calls or None,
                                            tokens=answer.eval_tokens or None)
            current.append(assistant)
            if not answer.tool_calls:
                if not answer.content.strip():
                    note = "the model only thought and gave no answer" if answer.thinking else \
                        "the model gave an empty answer"
                    await turn.emit(TextDelta(f"*({note}; try asking again or rephrasing)*"))
                await turn.emit(Done(turn.steps, turn.tokens, turn.elapsed(), answer.content))
                return
            current.extend(await self._run_tools(turn, key, answer.tool_calls))
        note = f"\n\n*(stopped after {self.settings.max_steps} steps: the step limit, MAX_STEPS)*"
        await turn.emit(TextDelta(note))
        await turn.emit(Done(turn.steps, turn.tokens, turn.elapsed(), note.strip(), stopped_at_max_steps=True))

    async def _ask(self, turn: _Turn, messages: list[ollama.Message]) -> _Answer:
        """One streamed model call; text and thinking are emitted as they arrive."""
        answer = _Answer()
        try:
            async for chunk in stream_chat(self.client, self.model, messages, TOOL_SCHEMAS):
                message = chunk.message
                if message.thinking:
                    answer.thinking += message.thinking
                    await turn.emit(ThinkingDelta(message.thinking))
                if message.content:
                    answer.content += message.content
                    await turn.emit(TextDelta(message.content))
                answer.tool_calls.extend(message.tool_calls or [])  # they may come in any chunk
                if chunk.done:
                    answer.prompt_tokens = chunk.prompt_eval_count or 0
                    answer.eval_tokens = chunk.eval_count or 0
        except BotError:
            if answer.content or answer.thinking:  # keep what the user already saw
                await self.store.append_message(turn.conversation.id, "assistant", answer.content,
                                                thinking=answer.thinking or None)
            raise
        turn.tokens += answer.prompt_tokens + answer.eval_tokens
        return answer

    async def _run_tools(self, turn: _Turn, key: VMKey,
                         calls: list[ollama.Message.ToolCall]) -> list[ollama.Message]:
        turn.unanswered = [call.function.name for call in calls]
        results = []
        for call in calls:
            turn.calls += 1
            name, arguments = call.function.name, dict(call.function.arguments or {})
            await turn.emit(ToolStart(turn.calls, name, arguments, turn.steps, self.settings.max_steps))
            started = time.monotonic()
            ctx = ToolContext(lambda: self.vms.channel(key), self.store, turn.conversation, self.settings,
                              turn.emit, turn.calls, lambda: self.shutting_down)
            result = await run_tool(ctx, name, call.function.arguments)
            await turn.emit(ToolEnd(turn.calls, name, result.ok, result.summary, result.exit_code,
                                    result.reason, time.monotonic() - started))
            await self.store.append_message(turn.conversation.id, "tool", result.content, tool_name=name)
            turn.unanswered.pop(0)
            results.append(ollama.Message(role="tool", content=result.content, tool_name=name))
        return results

    async def _close_unanswered(self, turn: _Turn, why: str) -> None:
        """Give every tool call left without a result one, so the stored history stays well formed."""
        for name in turn.unanswered:
            await self.store.append_message(turn.conversation.id, "tool", why, tool_name=name)
        turn.unanswered = []
