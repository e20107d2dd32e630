"""The agent's tools: their schemas for the model, argument checks, and handlers acting in the VM.

Every failure a model can cause (unknown tool, bad arguments, a missing file, a command that
fails) comes back as a `ToolResult` with ok=False and a message for the model: never an exception
that ends the turn (ollama-python examples/async-tools.py does the same).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.agent.events import AgentEvent, FileAttached, NotificationQueued, ToolOutput
from bot.agent.text import clean, clip, decode, human_size
from bot.config import Settings
from bot.errors import BotError, StoreError
from bot.store import Conversation, Store
from bot.vm.channel import ExecChannel

log = logging.getLogger(__name__)

MODEL_RESULT_CHARS = 6000  # what one tool result may take of the model's context
ATTACH_MAX_BYTES = 25 * 1024 * 1024
MAX_EXEC_TIMEOUT_S = 3600


@dataclass(frozen=True)
class ToolContext:
    """What a tool may touch: the conversation's VM, the store, and the turn's event stream."""

    channel: Callable[[], Awaitable[ExecChannel]]
    store: Store
    conversation: Conversation
    settings: Settings
    emit: Callable[[AgentEvent], Awaitable[None]]
    call_id: int
    shutting_down: Callable[[], bool] = lambda: False  # then a cancelled exec leaves its job running

    @property
    def session(self) -> str:
        """cwd and exported variables persist per conversation, like one shell."""
        return f"conv-{self.conversation.id}"


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the model reads
    ok: bool
    summary: str  # one line for the user
    exit_code: int | None = None
    reason: str | None = None


def failure(message: str) -> ToolResult:
    return ToolResult(f"Error: {message}", ok=False, summary=message)


def _param(kind: str, description: str) -> dict[str, str]:
    return {"type": kind, "description": description}


def _schema(name: str, description: str, required: list[str], **properties: dict[str, str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


TOOL_SCHEMAS: list[dict[str, Any]] = [
    _schema("exec", "Run a bash command in your Linux VM (Debian, user agent, cwd persists between "
            "calls). Returns the exit code and output. Start long-lived servers in the background "
            "with `cmd > log 2>&1 &`; add `&& notify done` to be told when a long job ends.", ["command"],
            command=_param("string", "the bash command"),
            timeout=_param("integer", "seconds before the whole job is killed (default 120)")),
    _schema("read_file", "Read a text file from the VM (paths are relative to /workspace).", ["path"],
            path=_param("string", "file path")),
    _schema("write_file", "Create or overwrite a file in the VM; parent folders are created.",
            ["path", "content"], path=_param("string", "file path"), content=_param("string", "file content")),
    _schema("list_dir", "List a folder in the VM.", [], path=_param("string", "folder (default /workspace)")),
    _schema("notify", "Send the user a notification (a direct message), e.g. when something they wait "
            "for is ready.", ["text"], text=_param("string", "the message")),
    _schema("attach_file", "Attach a file (or a zipped folder) from the VM to your reply so the user "
            "gets it.", ["path"], path=_param("string", "file or folder path")),
    _schema("remember", "Save a short note about the user (preferences, facts) that you will see in "
            "every later conversation.", ["note"], note=_param("string", "what to remember"),
            replace=_param("boolean", "replace the whole memory instead of adding to it")),
]

_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,)}


def check_arguments(name: str, arguments: Any) -> dict[str, Any] | str:
    """The arguments if they fit the tool's schema, else a message for the model."""
    schema = next((s["function"] for s in TOOL_SCHEMAS if s["function"]["name"] == name), None)
    if schema is None:
        known = ", ".join(s["function"]["name"] for s in TOOL_SCHEMAS)
        return f"there is no tool named {name!r}; the tools are: {known}."
    if not isinstance(arguments, dict):
        return f"the arguments of {name} must be a JSON object, not {type(arguments).__name__}."
    props: dict[str, dict[str, str]] = schema["parameters"]["properties"]
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        return f"{name} has no argument {', '.join(unknown)}; it takes: {', '.join(props)}."
    missing = [p for p in schema["parameters"]["required"] if p not in arguments]
    if missing:
        return f"{name} needs the argument {', '.join(missing)}."
    checked = dict(arguments)
    for key, value in arguments.items():
        kind = props[key]["type"]
        if kind == "integer" and isinstance(value, float) and value.is_integer():
            checked[key] = value = int(value)
        if not isinstance(value, _TYPES[kind]) or (kind == "integer" and isinstance(value, bool)):
            return f"the argument {key} of {name} must be a {kind}, not {type(value).__name__} ({value!r})."
    return checked


async def run_tool(ctx: ToolContext, name: str, arguments: Any) -> ToolResult:
    """Check the arguments and run the tool; every failure becomes a result for the model."""
    checked = check_arguments(name, arguments)
    if isinstance(checked, str):
        return failure(checked)
    try:
        return await HANDLERS[name](ctx, **checked)
    except BotError as exc:
        return failure(exc.message)


async def exec_tool(ctx: ToolContext, command: str, timeout: int | None = None) -> ToolResult:
    limit = min(max(timeout or ctx.settings.exec_timeout, 1), MAX_EXEC_TIMEOUT_S)
    channel = await ctx.channel()
    started = time.monotonic()
    job = await channel.exec(command, session=ctx.session, timeout=limit, cap=ctx.settings.exec_output_cap,
                             env={"AGENT_CONVERSATION": str(ctx.conversation.id)})
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")}
    output: list[str] = []
    try:
        async for chunk in job:
            text = clean(decoders[chunk.stream].decode(chunk.data))
            if text:
                output.append(text)
                await ctx.emit(ToolOutput(ctx.call_id, "stderr" if chunk.stream == "stderr" else "stdout", text))
        result = await job.wait()
    except asyncio.CancelledError:
        if not ctx.shutting_down():  # a user's cancel kills the whole job; a bot restart does not
            with contextlib.suppress(BotError):  # a lost channel must not turn the cancel into a failure
                await asyncio.shield(job.kill())
        raise
    summary = {"timeout": f"timeout after {limit:g} s", "killed": "killed",
               "oom": "killed: out of memory"}.get(result.reason, f"exit {result.code}")
    body = clip("".join(output), MODEL_RESULT_CHARS) or "(no output)"
    dropped = f"; {result.dropped:,} bytes of output dropped in the middle" if result.dropped else ""
    return ToolResult(f"[{summary}; {time.monotonic() - started:.1f} s{dropped}]\n{body}", ok=result.code == 0,
                      summary=summary, exit_code=result.code, reason=result.reason)


async def read_file_tool(ctx: ToolContext, path: str) -> ToolResult:
    data = await (await ctx.channel()).read_file(path, ctx.settings.file_read_cap)
    if b"\x00" in data[:8192]:
        return ToolResult(f"{path} is a binary file of {len(data):,} bytes; inspect it with exec "
                          "(file, xxd, python).", ok=True, summary=f"{path} (binary, {human_size(len(data))})")
    return ToolResult(clip(decode(data), MODEL_RESULT_CHARS), ok=True,
                      summary=f"read {path} ({human_size(len(data))})")


async def write_file_tool(ctx: ToolContext, path: str, content: str) -> ToolResult:
    data = content.encode()
    await (await ctx.channel()).write_file(path, data)
    return ToolResult(f"Wrote {len(data):,} bytes to {path}.", ok=True,
                      summary=f"wrote {path} ({human_size(len(data))})")


async def list_dir_tool(ctx: ToolContext, path: str = ".") -> ToolResult:
    entries = await (await ctx.channel()).list_dir(path)
    lines = [f"{e.name}/" if e.type == "dir" else f"{e.name}  ({human_size(e.size)})" for e in entries]
    return ToolResult(clip("\n".join(lines) or "(empty folder)", MODEL_RESULT_CHARS), ok=True,
                      summary=f"{len(entries)} entries in {path}")


async def notify_tool(ctx: ToolContext, text: str) -> ToolResult:
    if not text.strip():
        return failure("notify needs a non-empty text.")
    await ctx.store.enqueue_notification(ctx.conversation.owner_id, ctx.conversation.id, text[:1900], "tool")
    await ctx.emit(NotificationQueued(text[:1900]))
    return ToolResult("The notification is queued; the user will get it as a direct message.", ok=True,
                      summary="notification queued")


async def attach_file_tool(ctx: ToolContext, path: str) -> ToolResult:
    channel = await ctx.channel()
    entry = await channel.stat(path)
    name = posixpath.basename(posixpath.normpath(path)) or "workspace"
    if entry.type == "dir":
        data, filename = await channel.archive_out(path, "zip", ATTACH_MAX_BYTES), f"{name}.zip"
    else:
        data, filename = await channel.read_file(path, ATTACH_MAX_BYTES), name
    await ctx.emit(FileAttached(path, filename, data))
    return ToolResult(f"{filename} ({len(data):,} bytes) will be attached to your reply.", ok=True,
                      summary=f"attached {filename} ({human_size(len(data))})")


async def remember_tool(ctx: ToolContext, note: str, replace: bool = False) -> ToolResult:
    owner = ctx.conversation.owner_id
    current = "" if replace else await ctx.store.get_memory(owner)
    updated = f"{current}\n{note}".strip() if current else note.strip()
    try:
        await ctx.store.set_memory(owner, updated)
    except StoreError as exc:
        return failure(f"{exc.message} Use remember with replace=true and a shorter summary.")
    return ToolResult("Saved to memory.", ok=True, summary="memory updated")


HANDLERS: dict[str, Callable[..., Awaitable[ToolResult]]] = {
    "exec": exec_tool, "read_file": read_file_tool, "write_file": write_file_tool, "list_dir": list_dir_tool,
    "notify": notify_tool, "attach_file": attach_file_tool, "remember": remember_tool,
}
