#!/usr/bin/env python3
"""vmd: the VM's helper daemon (stdlib only). Runs as the VM's user under tini, started by entrypoint.sh.

The bot reaches it through one `docker exec -i python3 /opt/vmd/attach.py` per VM, which relays bytes to
the unix socket $VMD_RUN_DIR/vmd.sock. The wire protocol (length-prefixed JSON header + raw payload) is
documented in the bot's bot/vm/protocol.py; this file carries its own copy of the framing. vmd survives
the bot going away (jobs keep running, their output is discarded) and serves several connections.

Environment: VMD_RUN_DIR (/run/vmd: sockets, job scratch), VMD_STATE_DIR (/var/lib/vmd: sessions and
pending notifications), VMD_WORKSPACE (/workspace), VMD_CGROUP_ROOT (/sys/fs/cgroup).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import sys
import time
from typing import Any

import vmd_files
import vmd_jobs
import vmd_notes
import vmd_sys

log = logging.getLogger("vmd")
VERSION = 1
PREFIX = struct.Struct(">II")
MAX_HEADER, MAX_PAYLOAD = 1 << 20, 1 << 30
RUN_DIR = os.environ.get("VMD_RUN_DIR", "/run/vmd")
STATE_DIR = os.environ.get("VMD_STATE_DIR", "/var/lib/vmd")
FILE_OPS = {
    "read": vmd_files.read,
    "write": vmd_files.write,
    "list": vmd_files.list_dir,
    "stat": vmd_files.stat_path,
    "archive_out": vmd_files.archive_out,
    "archive_in": vmd_files.archive_in,
}


class Server:
    def __init__(self) -> None:
        home = os.environ.get("HOME") or "/home/agent"
        self.boot_time = time.time()
        self.connections: set[Connection] = set()
        self.notes = vmd_notes.NotificationStore(os.path.join(STATE_DIR, "notifications.json"))
        self.notes.listeners.append(self.broadcast)
        sessions = vmd_jobs.Sessions(
            os.path.join(STATE_DIR, "sessions.json"), vmd_jobs.base_env(home), vmd_files.WORKSPACE
        )
        self.jobs = vmd_jobs.JobContext(sessions, os.path.join(RUN_DIR, "jobs"), vmd_files.WORKSPACE, {})

    def broadcast(self, note: dict[str, Any]) -> None:
        for conn in list(self.connections):
            if conn.greeted:
                conn.send({"id": 0, "ev": "notify", **note})

    def tunnels_open(self) -> int:
        return sum(len(c.tunnels) for c in self.connections)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


class Tunnel:
    def __init__(self, conn: Connection, rid: int, writer: asyncio.StreamWriter) -> None:
        self.conn, self.rid, self.writer = conn, rid, writer
        self.task: asyncio.Task[None] | None = None

    async def pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(1 << 16):
                self.conn.send({"id": self.rid, "ev": "data"}, data)
                await self.conn.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.conn.tunnels.pop(self.rid, None) is not None:
            self.conn.send({"id": self.rid, "ev": "closed"})
        if not self.writer.is_closing():
            self.writer.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class Connection:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.greeted = False
        self.closed = False
        self.jobs: dict[int, vmd_jobs.Job] = {}
        self.tunnels: dict[int, Tunnel] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self.closed or self.writer.is_closing():
            return
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        self.writer.write(PREFIX.pack(len(raw), len(payload)) + raw)
        if payload:
            self.writer.write(payload)

    async def drain(self) -> None:
        if not self.closed:
            try:
                await self.writer.drain()
            except (OSError, RuntimeError):
                self.closed = True

    def error(self, rid: int, code: str, message: str) -> None:
        self.send({"id": rid, "ev": "error", "code": code, "message": message})

    async def read_frame(self) -> tuple[dict[str, Any], bytes] | None:
        try:
            prefix = await self.reader.readexactly(PREFIX.size)
        except asyncio.IncompleteReadError:
            return None
        hlen, plen = PREFIX.unpack(prefix)
        if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
            raise ValueError(f"frame too large ({hlen}, {plen})")
        header = json.loads(await self.reader.readexactly(hlen))
        payload = await self.reader.readexactly(plen) if plen else b""
        if not isinstance(header, dict):
            raise ValueError("header is not an object")  # noqa: TRY004 - a protocol error, like the others
        return header, payload

    async def run(self) -> None:
        try:
            while (frame := await self.read_frame()) is not None:
                header, payload = frame
                if not self.greeted and header.get("op") != "hello":
                    self.error(int(header.get("id") or 0), "no_hello", "The first request must be hello.")
                    break
                self.dispatch(header, payload)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            log.warning("connection dropped: %s", exc)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.closed = True
        for tunnel in list(self.tunnels.values()):
            tunnel.close()
        for job in self.jobs.values():
            job.close_stdin()  # nobody can write to it any more
        self.writer.close()

    def spawn(self, coro: Any, rid: int) -> None:
        """Run a request's work; whatever it raises is answered as an error for that request, so
        the bot never waits for an answer that will not come."""
        async def answered() -> None:
            try:
                await coro
            except vmd_jobs.RequestError as exc:
                self.error(rid, exc.code, exc.message)
            except (TypeError, ValueError, OverflowError) as exc:
                self.error(rid, "bad_request", f"Malformed request: {exc}")
            except Exception as exc:
                log.exception("request %s failed", rid)
                self.error(rid, "internal", f"The VM's helper failed: {exc}")

        task = asyncio.get_running_loop().create_task(answered())
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("request failed", exc_info=task.exception())

    def dispatch(self, req: dict[str, Any], payload: bytes) -> None:
        op, rid = req.get("op"), req.get("id", 0)
        try:
            if op == "hello":
                self.hello(rid)
            elif op == "exec":
                spec = vmd_jobs.ExecSpec.parse(req)
                job = self.jobs[rid] = vmd_jobs.Job(rid, spec, self.emitter(rid), self.server.jobs)
                self.spawn(self.exec(job), rid)
            elif op == "stdin":
                self.job(req).write_stdin(payload, bool(req.get("eof")))
            elif op == "kill":
                self.send({"id": rid, "ev": "result", "killed": self.job(req).kill("killed")})
            elif op in FILE_OPS:
                self.spawn(self.file_op(rid, op, req, payload), rid)
            elif op == "tunnel_open":
                self.spawn(self.tunnel_open(rid, req), rid)
            elif op == "tunnel_data":
                self.tunnel(req).writer.write(payload)
            elif op == "tunnel_close":
                self.tunnel(req).close()
            elif op == "stats":
                self.spawn(self.stats(rid), rid)
            elif op == "notify_ack":
                self.server.notes.ack(list(req.get("nids") or []))
            else:
                self.error(rid, "bad_request", f"Unknown op {op!r}.")
        except vmd_jobs.RequestError as exc:
            self.error(rid, exc.code, exc.message)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self.error(rid, "bad_request", f"Malformed {op} request: {exc}")
        except Exception as exc:
            log.exception("%s request failed", op)
            self.error(rid, "internal", f"The VM's helper failed on {op}: {exc}")

    def hello(self, rid: int) -> None:
        self.greeted = True
        self.send({"id": rid, "ev": "hello", "version": VERSION, "pid": os.getpid(),
                   "boot_time": self.server.boot_time})
        for note in self.server.notes.pending:
            self.send({"id": 0, "ev": "notify", **note})

    def job(self, req: dict[str, Any]) -> vmd_jobs.Job:
        job = self.jobs.get(int(req.get("target") or 0))
        if job is None:
            raise vmd_jobs.RequestError("not_found", f"No running command with id {req.get('target')}.")
        return job

    def tunnel(self, req: dict[str, Any]) -> Tunnel:
        tunnel = self.tunnels.get(int(req.get("target") or 0))
        if tunnel is None:
            raise vmd_jobs.RequestError("not_found", f"No open tunnel with id {req.get('target')}.")
        return tunnel

    def emitter(self, rid: int) -> vmd_jobs.Emit:
        def emit(header: dict[str, Any], data: bytes) -> None:
            self.send({"id": rid, **header}, data)

        return emit

    async def exec(self, job: vmd_jobs.Job) -> None:
        try:
            try:
                await job.start()
            except vmd_jobs.RequestError as exc:
                self.error(job.rid, exc.code, exc.message)
                return
            await job.supervise()
        finally:
            self.jobs.pop(job.rid, None)

    async def file_op(self, rid: int, op: str, req: dict[str, Any], payload: bytes) -> None:
        try:
            result, data = await asyncio.to_thread(FILE_OPS[op], req, payload)
        except vmd_files.FileOpError as exc:
            self.error(rid, exc.code, exc.message)
            return
        except (TypeError, ValueError) as exc:
            self.error(rid, "bad_request", f"Malformed {op} request: {exc}")
            return
        except OSError as exc:
            self.error(rid, "io_error", str(exc))
            return
        self.send({"id": rid, "ev": "result", **result}, data)
        await self.drain()

    async def tunnel_open(self, rid: int, req: dict[str, Any]) -> None:
        port = int(req.get("port", 0))
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (TimeoutError, OSError) as exc:
            self.error(rid, "refused", f"Nothing answers on port {port} in the VM ({exc}).")
            return
        if self.closed:
            writer.close()
            return
        tunnel = Tunnel(self, rid, writer)
        self.tunnels[rid] = tunnel
        self.send({"id": rid, "ev": "opened"})
        tunnel.task = asyncio.current_task()
        await tunnel.pump(reader)

    async def stats(self, rid: int) -> None:
        def collect() -> dict[str, Any]:
            mem, limit = vmd_sys.memory()
            return {"memory_bytes": mem, "memory_limit": limit, "cpu_usage_ns": vmd_sys.cpu_usage_ns(),
                    "uptime_s": vmd_sys.uptime_s(), "user_processes": vmd_sys.user_processes()}

        result = await asyncio.to_thread(collect)
        result.update(tunnels_open=self.server.tunnels_open(), jobs_running=len(self.server.jobs.running))
        self.send({"id": rid, "ev": "result", **result})


async def main() -> None:
    for d in (RUN_DIR, STATE_DIR, os.path.join(RUN_DIR, "jobs")):
        os.makedirs(d, exist_ok=True)
    for stale in os.listdir(os.path.join(RUN_DIR, "jobs")):  # left by jobs of a previous run
        try:
            os.unlink(os.path.join(RUN_DIR, "jobs", stale))
        except OSError:
            pass
    server = Server()
    vmd_jobs.install_sigchld(server.jobs.running)
    notify = await vmd_notes.serve_notify(server.notes, os.path.join(RUN_DIR, "notify.sock"))
    path = os.path.join(RUN_DIR, "vmd.sock")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    # Bind to a temporary name and rename, so a client never sees a socket that is not listening yet.
    tmp = path + ".new"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    main_server = await asyncio.start_unix_server(server.handle, tmp, limit=1 << 20)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    log.info("vmd %s listening on %s (pid %d)", VERSION, path, os.getpid())
    async with notify, main_server:
        await main_server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="vmd %(levelname)s %(message)s")
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
