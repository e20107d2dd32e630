"""FakeOllama: a local aiohttp server speaking Ollama's HTTP API, answering /api/chat from a script."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import socket
import string
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.fakes.ollama_double.models import ModelSpec, full_name
from tests.fakes.ollama_double.recorded import RecordedRequest
from tests.fakes.ollama_double.script import (
    DynamicReply,
    GarbageLine,
    Hang,
    HttpError,
    MidstreamError,
    Reply,
    Turn,
)
from tests.fakes.ollama_double.wire import ChatRun, created_at, go_json

DEFAULT_MODEL = ModelSpec("qwen3:4b")
PULL_MISSING = "pull model manifest: file does not exist"
_RECORD = web.RequestKey("ollama_double_record", RecordedRequest)


def refused_url(host: str = "127.0.0.1") -> str:
    """The URL of a port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=go_json(obj), content_type="application/json", charset="utf-8")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _wants_thinking(think: Any) -> bool:
    """Ollama's ThinkValue.Bool(): true, or a level such as "high"."""
    return think is True or (isinstance(think, str) and think not in ("", "false"))


async def _forever() -> None:
    """Wait until cancelled (the server stopping cancels its handlers)."""
    await asyncio.Event().wait()


class _LineWriter:
    """Writes NDJSON lines, sending the headers with the first one (as Ollama's server does)."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    async def send(self, line: str) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await self.response.prepare(self._request)
        await self.response.write(line.encode() + b"\n")

    async def finish(self) -> web.StreamResponse:
        assert self.response is not None, "a stream ends after at least one line"
        await self.response.write_eof()
        return self.response


class FakeOllama:
    """A protocol-faithful Ollama double on 127.0.0.1 (ephemeral port), driven by a script of replies.

    `models` are installed (default: qwen3:4b with completion, tools, thinking); `pullable` can be pulled.
    Every request is recorded in `requests`; /api/chat requests that found the script empty are also in
    `unexpected` (they were answered 500), and every such surprise is described in `problems`. Chat
    requests whose client went away before the answer ended are in `disconnected` (noticed at the next
    line written, so not during a hang).
    """

    def __init__(self, models: Iterable[ModelSpec | str] | None = None, *,
                 pullable: Iterable[ModelSpec | str] = (), version: str = "0.12.6",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._models: dict[str, ModelSpec] = {}
        for model in (DEFAULT_MODEL,) if models is None else models:
            self.add_model(model)
        specs = [m if isinstance(m, ModelSpec) else ModelSpec(m) for m in pullable]
        self._pullable = {full_name(spec.name): spec for spec in specs}
        self.version = version
        self.requests: list[RecordedRequest] = []
        self.unexpected: list[RecordedRequest] = []
        self.problems: list[str] = []
        self.disconnected: list[RecordedRequest] = []
        self._script: deque[Turn] = deque()
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        self._modified_at = datetime.now(UTC)
        self._rng = random.Random(0)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL to give `ollama.AsyncClient(host=...)`; stays the same across stop/start."""
        if not self._port:
            raise RuntimeError("FakeOllama has not been started")
        return f"http://{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again on the same port after a stop); a no-op when already running."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self._make_app(), shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and drop open connections (hanging and paced replies are cut off).

        Afterwards the port refuses connections until `start()`; script and records are kept.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- test-facing API ---------------------------------------------------------------------------
    def script(self, *turns: Turn) -> None:
        """Queue turns; each /api/chat request pops the next one (a str means Reply.text(str))."""
        self._script.extend(turns)

    @property
    def remaining(self) -> int:
        """How many scripted turns no request has consumed yet."""
        return len(self._script)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/api/chat"]

    @property
    def models(self) -> list[ModelSpec]:
        return list(self._models.values())

    def add_model(self, model: ModelSpec | str) -> ModelSpec:
        """Install a model (a bare name gets all capabilities)."""
        spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
        self._models[full_name(spec.name)] = spec
        return spec

    def remove_model(self, name: str) -> None:
        self._models.pop(full_name(name), None)

    def assert_clean(self, *, allow_leftover: bool = False) -> None:
        """Fail if a request surprised the double, or (unless allowed) scripted turns were left over."""
        issues = list(self.problems)
        if self._script and not allow_leftover:
            issues.append(f"{len(self._script)} scripted turn(s) were never requested")
        if issues:
            raise AssertionError("Ollama double: " + "; ".join(issues))

    async def wait_for_requests(self, count: int, *, path: str = "/api/chat", timeout: float = 5.0) -> None:
        """Wait until at least `count` requests to `path` have arrived."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: sum(r.path == path for r in self.requests) >= count), timeout)

    # -- HTTP ----------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=256 * 1024**2)
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_post("/api/chat", self._chat)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(request.method, request.path, body, time.monotonic())
        request[_RECORD] = record
        async with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()
        result: web.StreamResponse = await handler(request)
        return result

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return _json({"models": [spec.tag_entry(self._modified_at) for spec in self._models.values()]})

    async def _show(self, request: web.Request) -> web.Response:
        name = self._requested_model(request)
        spec = self._models.get(full_name(name)) if name else None
        if spec is None:
            return _error(404, f"model '{name}' not found")
        return _json(spec.show_body(self._modified_at))

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        name = self._requested_model(request)
        key = full_name(name) if name else ""
        spec = self._models.get(key) or self._pullable.get(key)
        streamed = request[_RECORD].stream
        if spec is None:
            if not streamed:
                return _error(500, PULL_MISSING)
            writer = _LineWriter(request)
            for line in ({"status": "pulling manifest"}, {"error": PULL_MISSING}):
                await writer.send(go_json(line))
            return await writer.finish()
        self._models[key] = spec
        if not streamed:
            return _json({"status": "success"})
        writer = _LineWriter(request)
        for status in spec.pull_statuses():
            await writer.send(go_json(status))
        return await writer.finish()

    @staticmethod
    def _requested_model(request: web.Request) -> str:
        body = request[_RECORD].body
        return str(body.get("model") or body.get("name") or "") if isinstance(body, dict) else ""

    # -- /api/chat -----------------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        record = request[_RECORD]
        if (refusal := self._refuse_chat(record)) is not None:
            return refusal
        if not record.messages:  # Ollama just loads the model
            return _json({"model": record.model, "created_at": created_at(),
                          "message": {"role": "assistant", "content": ""}, "done": True,
                          "done_reason": "load"})
        reply = await self._next_reply(record)
        if isinstance(reply, web.Response):
            return reply
        if isinstance(reply.failure, HttpError):
            return _error(reply.failure.status, reply.failure.message)
        run = ChatRun(record, reply, self._new_call_id)
        try:
            return await (self._stream(request, run) if record.stream else self._answer_once(run))
        except ConnectionResetError:  # the client went away mid-answer
            self.disconnected.append(record)
            return web.Response(status=499)

    def _refuse_chat(self, record: RecordedRequest) -> web.Response | None:
        """Ollama's checks before the model runs: missing/unknown model, thinking, tools."""
        if not isinstance(record.body, dict):
            return _error(400, "missing request body")
        name = record.model or ""
        if not name:
            return _error(400, "model is required")
        spec = self._models.get(full_name(name))
        if spec is None:
            return _error(404, f"model '{name}' not found")
        if _wants_thinking(record.think) and not spec.supports("thinking"):
            return _error(400, f'"{name}" does not support thinking')
        if record.tools and not spec.supports("tools"):
            return _error(400, f"{full_name(name)} does not support tools")
        return None

    async def _next_reply(self, record: RecordedRequest) -> Reply | web.Response:
        number = len(self.chat_requests)
        if not self._script:
            self.unexpected.append(record)
            self.problems.append(f"/api/chat request #{number} arrived with the script empty")
            return _error(500, f"ollama double: no scripted reply left for /api/chat request #{number}")
        turn = self._script.popleft()
        try:
            if isinstance(turn, DynamicReply):
                built = turn.build(record)
                turn = await built if inspect.isawaitable(built) else built
        except Exception as exc:  # a broken test helper must fail the test, visibly
            self.problems.append(f"dynamic reply for /api/chat request #{number} raised {exc!r}")
            return _error(500, f"ollama double: dynamic reply raised {exc!r}")
        reply = Reply.text(turn) if isinstance(turn, str) else turn
        scripted_calls = reply.final_tool_calls or any(c.tool_calls for c in reply.chunks)
        if scripted_calls and not record.tools:
            self.problems.append(f"/api/chat request #{number} offered no tools but the reply calls one")
        return reply

    async def _stream(self, request: web.Request, run: ChatRun) -> web.StreamResponse:
        reply, writer = run.reply, _LineWriter(request)
        await asyncio.sleep(reply.start_delay)
        for index, chunk in enumerate(reply.chunks):
            if index:
                await asyncio.sleep(reply.delay)
            await writer.send(go_json(run.chunk(chunk)))
        failure = reply.failure
        if isinstance(failure, Hang):
            await _forever()
        if isinstance(failure, MidstreamError):
            await writer.send(go_json({"error": failure.message}))
        elif isinstance(failure, GarbageLine):
            await writer.send(failure.line)
        else:
            if reply.chunks:
                await asyncio.sleep(reply.delay)
            await writer.send(go_json(run.final()))
        return await writer.finish()

    async def _answer_once(self, run: ChatRun) -> web.Response:
        reply = run.reply
        await asyncio.sleep(reply.start_delay + reply.delay * len(reply.chunks))
        if isinstance(reply.failure, Hang):
            await _forever()
        if isinstance(reply.failure, MidstreamError):
            return _error(500, reply.failure.message)
        if isinstance(reply.failure, GarbageLine):
            return web.Response(text=reply.failure.line, content_type="application/json", charset="utf-8")
        return _json(run.aggregate())

    def _new_call_id(self) -> str:
        return "call_" + "".join(self._rng.choices(string.ascii_lowercase + string.digits, k=8))
