"""The asyncio client of the exec channel: one long-lived connection to a VM's helper daemon (vmd).

`ExecChannel.open_docker()` starts ONE `docker exec -i python3 /opt/vmd/attach.py` in the VM and speaks
the frame protocol of bot/vm/protocol.py over its hijacked socket: one reader task per channel, no
thread per VM. Requests run concurrently; a dropped channel fails every call in flight with
`ChannelClosed`. Notifications pushed by vmd go to `on_notify` and are acknowledged once it returns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import docker
import docker.errors

from bot.errors import ChannelClosed, VMError
from bot.vm.handles import Call, ExecJob, Tunnel, lost, vm_error
from bot.vm.protocol import (
    CompletedExec,
    DirEntry,
    DockerDemuxer,
    FrameDecoder,
    HelloInfo,
    Notification,
    ProtocolError,
    VMStats,
    encode_header,
)

log = logging.getLogger(__name__)

NotifyCallback = Callable[[Notification], Awaitable[None]]
_T = TypeVar("_T", Call, ExecJob, Tunnel)
ATTACH_CMD = ["python3", "/opt/vmd/attach.py"]
READ_SIZE = 1 << 18
HELLO_TIMEOUT = 20.0


class ExecChannel:
    """A persistent, multiplexed connection to one VM's helper daemon."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, docker_framed: bool,
                 on_notify: NotifyCallback | None = None, keepalive: Any = None) -> None:
        self._reader, self._writer = reader, writer
        self._demux = DockerDemuxer() if docker_framed else None
        self._decoder = FrameDecoder()
        self._on_notify = on_notify
        self._keepalive = keepalive  # docker-py's SocketIO: keeps the hijacked response alive
        self._ids = itertools.count(1)
        self._pending: dict[int, Call | ExecJob | Tunnel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._stderr_tail = ""
        self.hello: HelloInfo | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    async def open_docker(
        cls, api: docker.APIClient, container_id: str, *, on_notify: NotifyCallback | None = None
    ) -> ExecChannel:
        """Starts the relay with one `docker exec` and greets vmd. Raises VMError if it cannot."""

        def start() -> Any:
            exec_id = api.exec_create(
                container_id, ATTACH_CMD, stdin=True, stdout=True, stderr=True, tty=False,
                user="agent", environment={"VMD_ROLE": "attach"},
            )["Id"]
            return api.exec_start(exec_id, socket=True)

        try:
            sio = await asyncio.to_thread(start)
        except docker.errors.DockerException as exc:
            raise VMError(f"Could not open a channel into the VM: {exc}") from exc
        raw = sio._sock  # take it before anything closes the response (that sets _sock to None)
        raw.settimeout(None)
        raw.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=raw, limit=READ_SIZE)
        channel = cls(reader, writer, docker_framed=True, on_notify=on_notify, keepalive=sio)
        await channel._handshake()
        return channel

    @classmethod
    async def from_streams(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                           docker_framed: bool, on_notify: NotifyCallback | None = None) -> ExecChannel:
        """A channel over already-open streams (a plain unix socket to vmd in tests); greets vmd."""
        channel = cls(reader, writer, docker_framed=docker_framed, on_notify=on_notify)
        await channel._handshake()
        return channel

    async def _handshake(self) -> None:
        try:
            ev, _ = await asyncio.wait_for(self.request({"op": "hello"}, what="connecting"), HELLO_TIMEOUT)
        except (TimeoutError, ChannelClosed) as exc:
            await self.close()
            detail = f" ({self._stderr_tail.strip()})" if self._stderr_tail.strip() else ""
            raise VMError(f"The VM's helper did not answer{detail}; the VM may need a restart.") from exc
        self.hello = HelloInfo(int(ev["version"]), int(ev["pid"]), float(ev["boot_time"]))

    # ---- plumbing -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await asyncio.shield(self._reader_task)

    async def close(self) -> None:
        if not self._closed:
            self._shutdown(None)
        try:
            await self._writer.wait_closed()
        except (OSError, RuntimeError):
            pass
        await asyncio.gather(self._reader_task, return_exceptions=True)

    def _shutdown(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        if exc is not None:
            log.warning("exec channel lost: %s", exc)
        pending, self._pending = self._pending, {}
        for target in pending.values():
            target.fail(lost(target.what))
        self._writer.close()
        if self._keepalive is not None:
            try:
                self._keepalive.close()
            except (OSError, ValueError):
                pass
        if self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()

    async def _read_loop(self) -> None:
        reason: BaseException | None = EOFError("the VM side closed the connection")
        try:
            while data := await self._reader.read(READ_SIZE):
                if self._demux is None:
                    self._feed(data)
                    continue
                for stream, chunk in self._demux.feed(data):
                    if stream == 2:
                        text = chunk.decode("utf-8", "replace")
                        self._stderr_tail = (self._stderr_tail + text)[-500:]
                        log.warning("VM relay: %s", text.rstrip())
                    else:
                        self._feed(chunk)
        except asyncio.CancelledError:
            reason = None
        except (OSError, ProtocolError) as exc:
            reason = exc
        except Exception as exc:  # a malformed event must not kill the loop silently
            log.exception("exec channel reader failed")
            reason = exc
        finally:
            self._shutdown(reason)

    def _feed(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            ev, rid = frame.header, frame.header.get("id", 0)
            if rid == 0:
                if ev.get("ev") == "notify":
                    self._spawn(self._deliver(Notification.from_event(ev)))
                continue
            target = self._pending.get(rid)
            if target is None:
                if ev.get("ev") == "error":
                    log.info("VM helper: %s (request %s)", ev.get("message"), rid)
                continue
            if target.on_event(ev, frame.payload):
                self._pending.pop(rid, None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, note: Notification) -> None:
        if self._on_notify is None:
            return
        try:
            await self._on_notify(note)
            await self.send({"op": "notify_ack", "nids": [note.nid]}, what="acknowledging a notification")
        except ChannelClosed:
            pass
        except Exception:
            log.exception("on_notify failed for notification %s; it stays queued in the VM", note.nid)

    async def send(self, header: dict[str, Any], payload: bytes = b"", *, what: str, rid: int | None = None) -> int:
        if self._closed:
            raise lost(what)
        rid = next(self._ids) if rid is None else rid
        self._writer.write(encode_header({"id": rid, **header}, len(payload)))
        if payload:
            self._writer.write(payload)
        try:
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            self._shutdown(exc)
            raise lost(what) from exc
        return rid

    async def _start(self, make: Callable[[int], _T], header: dict[str, Any], payload: bytes = b"") -> _T:
        """Registers the request's event target, then sends it."""
        rid = next(self._ids)
        target = self._pending[rid] = make(rid)
        try:
            await self.send(header, payload, what=target.what, rid=rid)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return target

    async def request(self, header: dict[str, Any], payload: bytes = b"", *, what: str,
                       file_op: bool = False) -> tuple[dict[str, Any], bytes]:
        call = await self._start(lambda rid: Call(what, rid), header, payload)
        try:
            ev, data = await call.future
        finally:
            self._pending.pop(call.id, None)
        if ev.get("ev") == "error":
            raise vm_error(ev, file_op=file_op)
        return ev, data

    # ---- commands -----------------------------------------------------------------------------

    async def exec(self, cmd: str, *, session: str = "default", cwd: str | None = None,
                   env: dict[str, str] | None = None, timeout: float | None = None,
                   stdin: bool = False, cap: int = 65536) -> ExecJob:
        """Starts `cmd` (bash) in the VM; the job streams output and ends when its main process exits."""
        options = {"cwd": cwd, "env": env or None, "timeout": timeout}
        header = {"op": "exec", "cmd": cmd, "session": session, "stdin": stdin, "cap": cap,
                  **{k: v for k, v in options.items() if v is not None}}
        return await self._start(lambda rid: ExecJob(self, rid, cmd), header)

    async def run(self, cmd: str, *, session: str = "default", cwd: str | None = None,
                  env: dict[str, str] | None = None, timeout: float | None = None,
                  cap: int = 65536) -> CompletedExec:
        """exec() and collect stdout and stderr (capped by `cap` together) and the result. If the caller
        is cancelled, the command is killed."""
        job = await self.exec(cmd, session=session, cwd=cwd, env=env, timeout=timeout, cap=cap)
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        try:
            async for chunk in job:
                out.setdefault(chunk.stream, []).append(chunk.data)
            result = await job.wait()
        except asyncio.CancelledError:
            if not job.done and not self._closed:
                self._spawn(job.kill_quietly())
            raise
        return CompletedExec(result, b"".join(out["stdout"]), b"".join(out["stderr"]))

    # ---- files --------------------------------------------------------------------------------

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        return (await self._file_op({"op": "read", "path": path, "max": max_bytes}, f"reading {path}"))[1]

    async def write_file(self, path: str, data: bytes, mode: int | None = None) -> None:
        header = {"op": "write", "path": path} | ({"mode": mode} if mode is not None else {})
        await self._file_op(header, f"writing {path}", data)

    async def list_dir(self, path: str) -> list[DirEntry]:
        ev, _ = await self._file_op({"op": "list", "path": path}, f"listing {path}")
        return [DirEntry.from_dict(e) for e in ev.get("entries", [])]

    async def stat(self, path: str) -> DirEntry:
        return DirEntry.from_dict((await self._file_op({"op": "stat", "path": path}, f"looking at {path}"))[0])

    async def archive_out(self, path: str, fmt: str, max_bytes: int) -> bytes:
        header = {"op": "archive_out", "path": path, "format": fmt, "max": max_bytes}
        return (await self._file_op(header, f"packing {path}"))[1]

    async def archive_in(self, dest: str, tar_bytes: bytes) -> None:
        await self._file_op({"op": "archive_in", "path": dest, "format": "tar"}, f"unpacking into {dest}", tar_bytes)

    async def _file_op(self, header: dict[str, Any], what: str, payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        return await self.request(header, payload, what=what, file_op=True)

    # ---- tunnel and stats ---------------------------------------------------------------------

    async def open_tunnel(self, port: int) -> Tunnel:
        """A byte stream to 127.0.0.1:`port` inside the VM. Raises VMError when nothing listens."""
        tunnel = await self._start(lambda rid: Tunnel(self, rid, port), {"op": "tunnel_open", "port": port})
        try:
            await tunnel.opened
        except BaseException:
            self._pending.pop(tunnel.id, None)
            raise
        return tunnel

    async def stats(self) -> VMStats:
        ev, _ = await self.request({"op": "stats"}, what="reading the VM's usage")
        return VMStats.from_dict(ev)
