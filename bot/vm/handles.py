"""What a request to the VM's helper becomes while it runs: a one-answer call, a running command,
or a tunnel. Each receives its events from the channel's reader and fails when the channel drops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from bot.errors import ChannelClosed, VMError, VMFileError
from bot.vm.protocol import ExecResult, OutputChunk

log = logging.getLogger(__name__)


class Wire(Protocol):
    """The channel as the handles use it."""

    @property
    def closed(self) -> bool:
        ...

    async def send(self, header: dict[str, Any], payload: bytes = b"", *, what: str, rid: int | None = None) -> int:
        ...

    async def request(self, header: dict[str, Any], payload: bytes = b"", *, what: str,
                      file_op: bool = False) -> tuple[dict[str, Any], bytes]:
        ...


def lost(what: str) -> ChannelClosed:
    return ChannelClosed(f"The connection to the VM was lost while {what}; run it again.")


def vm_error(ev: dict[str, Any], *, file_op: bool) -> VMError:
    message = str(ev.get("message") or "The VM's helper reported an error.")
    return VMFileError(message, str(ev.get("code") or "error")) if file_op else VMError(message)


class Call:
    """A request answered by exactly one event (result, hello, opened... or error)."""

    def __init__(self, what: str, rid: int) -> None:
        self.what, self.id = what, rid
        self.future: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()

    def on_event(self, ev: dict[str, Any], payload: bytes) -> bool:
        if not self.future.done():
            self.future.set_result((ev, payload))
        return True

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class ExecJob:
    """One running command: iterate it for `OutputChunk`s, `await wait()` for the `ExecResult`."""

    def __init__(self, channel: Wire, rid: int, cmd: str) -> None:
        self.channel, self.id, self.cmd = channel, rid, cmd
        self.what = f"running `{cmd if len(cmd) <= 60 else cmd[:57] + '...'}`"
        self._chunks: asyncio.Queue[OutputChunk | BaseException | None] = asyncio.Queue()
        self._result: asyncio.Future[ExecResult] = asyncio.get_running_loop().create_future()
        self._result.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    def on_event(self, ev: dict[str, Any], payload: bytes) -> bool:
        kind = ev.get("ev")
        if kind == "out":
            self._chunks.put_nowait(OutputChunk(str(ev.get("stream", "stdout")), payload))
            return False
        if kind == "exit":
            if not self._result.done():
                self._result.set_result(ExecResult.from_event(ev))
                self._chunks.put_nowait(None)
        else:
            self.fail(vm_error(ev, file_op=False))
        return True

    def fail(self, exc: BaseException) -> None:
        if not self._result.done():
            self._result.set_exception(exc)
            self._chunks.put_nowait(exc)

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self

    async def __anext__(self) -> OutputChunk:
        item = await self._chunks.get()
        if item is None:
            self._chunks.put_nowait(None)  # iterating again ends at once
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._chunks.put_nowait(item)
            raise item
        return item

    @property
    def done(self) -> bool:
        return self._result.done()

    async def wait(self) -> ExecResult:
        return await asyncio.shield(self._result)

    async def write(self, data: bytes) -> None:
        await self.channel.send({"op": "stdin", "target": self.id}, data, what=self.what)

    async def close_stdin(self) -> None:
        await self.channel.send({"op": "stdin", "target": self.id, "eof": True}, what=self.what)

    async def kill(self) -> None:
        """Kills the whole job (its process group and every process that carries its marker)."""
        if self.done:
            return
        try:
            await self.channel.request({"op": "kill", "target": self.id}, what=f"stopping {self.what[8:]}")
        except ChannelClosed:
            raise
        except VMError:
            if not self.done:  # vmd answers not_found when the job ended meanwhile
                raise

    async def kill_quietly(self) -> None:
        try:
            await self.kill()
        except VMError as exc:
            log.debug("kill of %s failed: %s", self.what, exc)


class Tunnel:
    """A byte stream to a TCP port on the VM's localhost, carried by the channel."""

    def __init__(self, channel: Wire, rid: int, port: int) -> None:
        self.channel, self.id, self.port = channel, rid, port
        self.what = f"tunnelling to port {port}"
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._data: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._eof = False
        self.closed = False

    def on_event(self, ev: dict[str, Any], payload: bytes) -> bool:
        kind = ev.get("ev")
        if kind == "opened":
            self.opened.set_result(None)
            return False
        if kind == "data":
            self._data.put_nowait(payload)
            return False
        if kind == "error" and not self.opened.done():
            self.opened.set_exception(vm_error(ev, file_op=False))
        self.closed = True
        self._data.put_nowait(b"")
        return True

    def fail(self, exc: BaseException) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._data.put_nowait(exc)

    async def read(self) -> bytes:
        """The next bytes from the VM side; b"" once the tunnel is closed."""
        if self._eof:
            return b""
        item = await self._data.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if not item:
            self._eof = True
        return item

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise VMError(f"The tunnel to port {self.port} in the VM is closed.")
        await self.channel.send({"op": "tunnel_data", "target": self.id}, data, what=self.what)

    async def close(self) -> None:
        if not self.closed and not self.channel.closed:
            self.closed = True
            try:
                await self.channel.send({"op": "tunnel_close", "target": self.id}, what=self.what)
            except ChannelClosed:
                pass
