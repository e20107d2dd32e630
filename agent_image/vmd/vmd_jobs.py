"""vmd's `exec` jobs: one bash per call, per-session cwd/env, an output cap, whole-job kill, OOM reason.

Each job's processes carry VMD_JOB=<marker> in their environment, so a kill reaches children that
left the process group (setsid). The call ends when bash (the main process) exits; pipes still held
by background children are drained briefly, then kept draining in the background and discarded.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import vmd_sys

# bash runs the command with `eval`; the EXIT trap saves cwd and the exported environment for the session.
WRAPPER = r"""echo 1000 >/proc/self/oom_score_adj 2>/dev/null
__vmd_state=$1 __vmd_cmd=$2
shift 2
trap '__vmd_rc=$?; { pwd >"$__vmd_state.cwd"; env -0 >"$__vmd_state.env"; } 2>/dev/null; exit $__vmd_rc' EXIT
eval "$__vmd_cmd"
"""
DROP_ENV = {"PWD", "OLDPWD", "SHLVL", "_", "VMD_JOB", "VMD_ROLE"}
DRAIN_GRACE = 0.05
Emit = Callable[[dict[str, Any], bytes], None]


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ExecSpec:
    cmd: str
    session: str = "default"
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    stdin: bool = False
    cap: int = 65536

    @classmethod
    def parse(cls, req: dict[str, Any]) -> ExecSpec:
        cmd, env = req.get("cmd"), req.get("env") or {}
        if not isinstance(cmd, str) or not cmd.strip():
            raise RequestError("bad_request", "exec needs a non-empty `cmd` string.")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise RequestError("bad_request", "`env` must map names to string values.")
        timeout = req.get("timeout")
        return cls(
            cmd=cmd,
            session=str(req.get("session") or "default"),
            cwd=req.get("cwd") or None,
            env=dict(env),
            timeout=float(timeout) if timeout else None,
            stdin=bool(req.get("stdin")),
            cap=max(0, int(req.get("cap", 65536))),
        )


class Sessions:
    """cwd + exported environment per session name, persisted as JSON (LRU, bounded)."""

    def __init__(self, path: str, base_env: dict[str, str], default_cwd: str, limit: int = 200) -> None:
        self.path, self.base_env, self.default_cwd, self.limit = path, base_env, default_cwd, limit
        self._data: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        try:
            with open(path, encoding="utf-8") as f:
                self._data.update(json.load(f))
        except (OSError, ValueError):
            pass

    def get(self, name: str) -> tuple[str, dict[str, str]]:
        s = self._data.get(name)
        if not s:
            return self.default_cwd, dict(self.base_env)
        return s["cwd"], dict(s["env"])

    def update(self, name: str, cwd: str, env: dict[str, str]) -> None:
        if self._data.get(name) == {"cwd": cwd, "env": env}:
            return
        self._data[name] = {"cwd": cwd, "env": env}
        self._data.move_to_end(name)
        while len(self._data) > self.limit:
            self._data.popitem(last=False)
        vmd_sys.write_json_atomic(self.path, self._data)


class OutputCap:
    """Streams the first cap/2 bytes, keeps the last cap/2 in a ring and counts what fell between."""

    def __init__(self, cap: int) -> None:
        self.half = cap // 2
        self.sent = 0
        self.dropped = 0
        self.drop_stream = "stdout"
        self._tail: collections.deque[list[Any]] = collections.deque()
        self._tail_len = 0

    def add(self, stream: str, data: bytes) -> bytes:
        """Returns the part to stream now; the rest goes to the tail."""
        room = self.half - self.sent
        head = data[:room] if room > 0 else b""
        self.sent += len(head)
        rest = data[len(head) :]
        if rest:
            self._tail.append([stream, rest])
            self._tail_len += len(rest)
            self._trim()
        return head

    def _trim(self) -> None:
        while self._tail_len > self.half:
            first = self._tail[0]
            excess = self._tail_len - self.half
            if not self.dropped:
                self.drop_stream = first[0]
            if len(first[1]) <= excess:
                self._tail.popleft()
                cut = len(first[1])
            else:
                first[1] = first[1][excess:]
                cut = excess
            self._tail_len -= cut
            self.dropped += cut

    def finish(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        if self.dropped:
            out.append((self.drop_stream, f"\n[... {self.dropped:,} bytes dropped ...]\n".encode()))
        out.extend((s, bytes(d)) for s, d in self._tail)
        self._tail.clear()
        return out


def _same(proto: _Pipe) -> _Pipe:
    return proto


class _Pipe(asyncio.Protocol):
    def __init__(self, job: Job, stream: str) -> None:
        self.job, self.stream = job, stream
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.job.on_output(self.stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class JobContext:
    sessions: Sessions
    job_dir: str
    workspace: str
    running: dict[str, Job]  # marker -> job whose main process has not been reported yet


class Job:
    def __init__(self, rid: int, spec: ExecSpec, emit: Emit, ctx: JobContext) -> None:
        self.rid, self.spec, self.emit, self.ctx = rid, spec, emit, ctx
        self.marker = uuid.uuid4().hex
        self.cap = OutputCap(spec.cap)
        self.reason: str | None = None
        self.finished = False
        self.exited = asyncio.Event()
        self.popen: subprocess.Popen[bytes] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._early_stdin: list[tuple[bytes, bool]] = []
        self._pipes: list[_Pipe] = []
        self._timer: asyncio.TimerHandle | None = None
        self._state = os.path.join(ctx.job_dir, self.marker)
        self._base: tuple[str, dict[str, str]] = ("", {})
        self._cwd = ""

    def _start_dir(self, session_cwd: str) -> str:
        if self.spec.cwd:
            cwd = os.path.join(self.ctx.workspace, os.path.expanduser(self.spec.cwd))
            if not os.path.isdir(cwd):
                raise RequestError("bad_cwd", f"The directory {cwd} does not exist in the VM.")
            return cwd
        for cand in (session_cwd, self.ctx.workspace, os.path.expanduser("~"), "/"):
            if cand and os.path.isdir(cand):
                return cand
        return "/"

    async def start(self) -> None:
        if self.reason is not None:
            raise RequestError("killed", "The command was stopped before it started.")
        session_cwd, session_env = self._base = self.ctx.sessions.get(self.spec.session)
        self._cwd = self._start_dir(session_cwd)
        env = {**session_env, **self.spec.env, "VMD_JOB": self.marker}
        self.oom_before = vmd_sys.oom_kills()
        argv = ["bash", "--noprofile", "--norc", "-c", WRAPPER, "bash", self._state, self.spec.cmd]
        try:
            self.popen = subprocess.Popen(  # noqa: ASYNC220 - vfork+exec, returns at once; exit via SIGCHLD
                argv, stdin=subprocess.PIPE if self.spec.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self._cwd, env=env,
                start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise RequestError("spawn_failed", f"Could not start the command: {exc}") from exc
        self.started = time.monotonic()
        self.ctx.running[self.marker] = self
        loop = asyncio.get_running_loop()
        for stream, pipe in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr)):
            proto = _Pipe(self, stream)
            self._pipes.append(proto)
            await loop.connect_read_pipe(functools.partial(_same, proto), pipe)
        if self.popen.stdin is not None:
            self._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, self.popen.stdin)
            early, self._early_stdin = self._early_stdin, []
            for data, eof in early:
                self.write_stdin(data, eof)
        if self.spec.timeout:
            self._timer = loop.call_later(self.spec.timeout, self.kill, "timeout")

    def on_output(self, stream: str, data: bytes) -> None:
        if self.finished:
            return  # background children after the call ended: drained and discarded
        head = self.cap.add(stream, data)
        if head:
            self.emit({"ev": "out", "stream": stream}, head)

    def write_stdin(self, data: bytes, eof: bool) -> None:
        if self._stdin is None and self.spec.stdin and not self.finished:
            self._early_stdin.append((data, eof))  # arrived while the job was starting
            return
        if self._stdin is None or self._stdin.is_closing():
            raise RequestError("no_stdin", "This command's stdin is not open (start it with stdin=true).")
        if data:
            self._stdin.write(data)
        if eof:
            self._stdin.close()

    def close_stdin(self) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()

    def kill(self, reason: str = "killed") -> int:
        if not self.finished and self.reason is None:
            self.reason = reason
        return vmd_sys.kill_marked(self.marker, self.popen.pid if self.popen else None)

    async def supervise(self) -> None:
        """Waits for the main process, then reports the exit (always exactly once)."""
        assert self.popen is not None
        while self.popen.poll() is None:
            try:
                await asyncio.wait_for(self.exited.wait(), 1.0)
            except TimeoutError:
                pass
        if self._timer:
            self._timer.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.done for p in self._pipes)), DRAIN_GRACE)
        except TimeoutError:
            pass
        self.ctx.running.pop(self.marker, None)
        self.finished = True
        self.close_stdin()
        self._report(self.popen.returncode)

    def _report(self, rc: int) -> None:
        code = 128 - rc if rc < 0 else rc
        reason = self.reason
        if reason is None:
            reason = "oom" if code == 137 and vmd_sys.oom_kills() > self.oom_before else "exit"
        try:
            self._save_session()
        except (OSError, ValueError) as exc:
            self.emit({"ev": "out", "stream": "stderr"}, f"[vmd: session state not saved: {exc}]\n".encode())
        for stream, data in self.cap.finish():
            self.emit({"ev": "out", "stream": stream}, data)
        duration = round(time.monotonic() - self.started, 4)
        self.emit({"ev": "exit", "code": code, "reason": reason, "dropped": self.cap.dropped,
                   "duration": duration}, b"")

    def _save_session(self) -> None:
        try:
            with open(self._state + ".cwd", "rb") as f:
                cwd = os.fsdecode(f.read().rstrip(b"\n"))
            with open(self._state + ".env", "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return  # killed before the EXIT trap ran: keep the session as it was
        finally:
            for ext in (".cwd", ".env"):
                try:
                    os.unlink(self._state + ext)
                except OSError:
                    pass
        env: dict[str, str] = {}
        for item in raw.split(b"\0"):
            key, sep, raw_value = item.partition(b"=")
            if sep and os.fsdecode(key) not in DROP_ENV:
                env[os.fsdecode(key)] = os.fsdecode(raw_value)
        old_cwd, old_env = self._base
        for name, value in self.spec.env.items():  # per-call variables do not stick
            if env.get(name) == value:
                if name in old_env:
                    env[name] = old_env[name]
                else:
                    env.pop(name, None)
        if self.spec.cwd and cwd == self._cwd:
            cwd = old_cwd
        self.ctx.sessions.update(self.spec.session, cwd, env)


def base_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.setdefault("HOME", home)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    return env


def reap(running: dict[str, Job]) -> None:
    """SIGCHLD: wake every job whose main process has exited."""
    for job in list(running.values()):
        if job.popen is not None and job.popen.poll() is not None:
            job.exited.set()


def install_sigchld(running: dict[str, Job]) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, reap, running)
