"""vmd run as a local subprocess (no Docker) and driven by ExecChannel over a plain unix socket.

vmd honours VMD_RUN_DIR / VMD_STATE_DIR / VMD_WORKSPACE, so each test gets its own helper in tmp_path.
Every process a test's jobs start carries VMD_RUN_DIR=<that tmp dir>: teardown kills them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.errors import ChannelClosed, VMError, VMFileError
from bot.vm.channel import ExecChannel
from bot.vm.protocol import (
    DockerDemuxer,
    FrameDecoder,
    Notification,
    ProtocolError,
    encode_frame,
)

VMD_DIR = Path(__file__).resolve().parents[2] / "agent_image" / "vmd"


# ---- protocol ------------------------------------------------------------------------------------


def test_frames_survive_any_split() -> None:
    frames = [({"id": 1, "op": "exec", "cmd": "é"}, b""), ({"id": 2, "ev": "out"}, bytes(range(256)) * 40)]
    stream = b"".join(encode_frame(h, p) for h, p in frames)
    for _ in range(20):
        decoder, got, pos = FrameDecoder(), [], 0
        while pos < len(stream):
            step = random.randint(1, 700)
            got += decoder.feed(stream[pos : pos + step])
            pos += step
        assert [(f.header, f.payload) for f in got] == frames
        assert decoder.buffered == 0


def test_frame_layout_and_garbage() -> None:
    raw = encode_frame({"id": 7, "op": "hello"}, b"xy")
    hlen, plen = struct.unpack(">II", raw[:8])
    assert json.loads(raw[8 : 8 + hlen]) == {"id": 7, "op": "hello"} and plen == 2 and raw.endswith(b"xy")
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">II", 1 << 30, 0))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">II", 3, 0) + b"[1]")


def test_docker_demuxer() -> None:
    stream = struct.pack(">BxxxL", 1, 3) + b"abc" + struct.pack(">BxxxL", 2, 2) + b"er"
    demux = DockerDemuxer()
    assert demux.feed(stream[:5]) == []
    assert demux.feed(stream[5:]) == [(1, b"abc"), (2, b"er")]


# ---- a local vmd -----------------------------------------------------------------------------------


class LocalVMD:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir, self.workspace = root / "run", root / "ws"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, VMD_RUN_DIR=str(self.run_dir), VMD_STATE_DIR=str(root / "state"),
                        VMD_WORKSPACE=str(self.workspace), HOME=str(root), PYTHONDONTWRITEBYTECODE="1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.channels: list[ExecChannel] = []

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", str(VMD_DIR / "vmd.py")], env=self.env)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        for _ in range(500):
            try:
                return await asyncio.open_unix_connection(str(self.run_dir / "vmd.sock"))
            except OSError:
                await asyncio.sleep(0.01)
        raise AssertionError("vmd did not start")

    async def channel(self, on_notify: Callable[[Notification], Awaitable[None]] | None = None) -> ExecChannel:
        reader, writer = await self.connect()
        channel = await ExecChannel.from_streams(reader, writer, docker_framed=False, on_notify=on_notify)
        self.channels.append(channel)
        return channel

    def job_pids(self, word: str = "") -> list[int]:
        """Live processes started by this vmd's jobs whose command line contains `word`."""
        needle, found = f"\0VMD_RUN_DIR={self.run_dir}\0".encode(), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                env = b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in env and "VMD_JOB=" in env.decode(errors="replace") and state != "Z" and word in cmdline:
                found.append(int(pid))
        return found

    async def cleanup(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.stop()
        for pid in self.job_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
async def vmd(tmp_path: Path) -> AsyncIterator[LocalVMD]:
    helper = LocalVMD(tmp_path)
    helper.start()
    yield helper
    await helper.cleanup()


@pytest.fixture
async def ch(vmd: LocalVMD) -> ExecChannel:
    return await vmd.channel()


# ---- exec --------------------------------------------------------------------------------------------


async def test_hello_and_output_streams_as_produced(ch: ExecChannel) -> None:
    assert ch.hello is not None and ch.hello.version == 1
    start = time.monotonic()
    job = await ch.exec("echo a; echo e >&2; sleep 1; echo b")
    first = await job.__anext__()
    assert first.data == b"a\n" and time.monotonic() - start < 0.7
    rest = [c async for c in job]
    assert (await job.wait()).code == 0 and time.monotonic() - start >= 1
    assert sorted(c.data for c in rest) == [b"b\n", b"e\n"]


async def test_vmd_says_nothing_before_hello(vmd: LocalVMD) -> None:
    reader, writer = await vmd.connect()
    assert (await asyncio.to_thread(_notify, vmd, "pending")).returncode == 0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)
    writer.write(encode_frame({"id": 5, "op": "stats"}))
    frames = FrameDecoder().feed(await asyncio.wait_for(reader.read(1 << 16), 5))
    assert frames[0].header["ev"] == "error" and frames[0].header["code"] == "no_hello"
    assert await asyncio.wait_for(reader.read(1), 5) == b""
    writer.close()


async def test_concurrent_commands_overlap(ch: ExecChannel) -> None:
    start = time.monotonic()
    results = await asyncio.gather(*(ch.run("sleep 0.6") for _ in range(3)))
    assert all(r.result.ok for r in results) and time.monotonic() - start < 1.5


async def test_sessions_keep_cwd_and_exports(vmd: LocalVMD, ch: ExecChannel) -> None:
    assert (await ch.run("pwd")).stdout.decode().strip() == str(vmd.workspace)
    await ch.run("cd /tmp && export A=1 && unset HOME_NOPE")
    assert (await ch.run('pwd; echo "$A"')).stdout == b"/tmp\n1\n"
    assert (await ch.run('pwd; echo "${A:-none}"', session="other")).stdout == f"{vmd.workspace}\nnone\n".encode()
    once = await ch.run('echo "$B"; pwd', env={"B": "2"}, cwd="/")
    assert once.stdout == b"2\n/\n"
    assert (await ch.run('echo "${B:-unset}"; pwd')).stdout == b"unset\n/tmp\n"  # per-call env/cwd do not stick
    vmd.stop()
    vmd.start()
    again = await vmd.channel()
    assert (await again.run('pwd; echo "$A"')).stdout == b"/tmp\n1\n"


async def test_exit_codes_and_signals(ch: ExecChannel) -> None:
    assert (await ch.run("exit 3")).code == 3
    assert (await ch.run("kill -TERM $$")).code == 143
    bad = await ch.run("if then")
    assert bad.code == 2 and b"syntax" in bad.stderr


async def test_stdin_reaches_read(ch: ExecChannel) -> None:
    job = await ch.exec("read x; echo got $x; cat", stdin=True)
    await job.write(b"hello\n")
    await job.write(b"more")
    await job.close_stdin()
    assert b"".join([c.data async for c in job]) == b"got hello\nmore"
    assert (await ch.run("read x; echo [$x]")).stdout == b"[]\n"  # no stdin -> /dev/null


async def test_background_children_do_not_hold_the_call(vmd: LocalVMD, ch: ExecChannel) -> None:
    start = time.monotonic()
    result = await ch.run("sleep 30 & echo started")
    assert result.stdout == b"started\n" and time.monotonic() - start < 1
    assert vmd.job_pids("sleep 30")  # still running
    quiet = await ch.run("sleep 31 >/dev/null 2>&1 &")
    assert quiet.result.ok and vmd.job_pids("sleep 31")


async def test_timeout_and_kill_take_the_whole_job(vmd: LocalVMD, ch: ExecChannel) -> None:
    result = await ch.run("sleep 100 & setsid sleep 101; wait", timeout=1)
    assert (result.code, result.result.reason) == (137, "timeout")
    await asyncio.sleep(0.1)
    assert not vmd.job_pids("sleep 10")
    job = await ch.exec("setsid sleep 102 & sleep 103")
    await asyncio.sleep(0.3)
    await job.kill()
    assert (await job.wait()).reason == "killed"
    await asyncio.sleep(0.1)
    assert not vmd.job_pids("sleep 10")


async def test_output_cap_keeps_head_and_tail(ch: ExecChannel) -> None:
    result = await ch.run("head -c 10000000 /dev/zero; printf END", cap=65536)
    marker = b"\n[... 9,934,467 bytes dropped ...]\n"
    assert result.result.dropped == 9_934_467
    assert result.stdout[:32768] == bytes(32768) and result.stdout[32768:].startswith(marker)
    assert result.stdout.endswith(b"END") and len(result.stdout) == 65536 + len(marker)
    small = await ch.run("echo hi", cap=65536)
    assert small.result.dropped == 0 and small.stdout == b"hi\n"


async def test_binary_output_is_exact(vmd: LocalVMD, ch: ExecChannel) -> None:
    result = await ch.run("head -c 100000 /dev/urandom | tee blob | sha256sum", cap=1 << 20)
    data = (vmd.workspace / "blob").read_bytes()
    assert hashlib.sha256(data).hexdigest() == result.stdout.split()[0].decode()
    assert (await ch.run("cat blob", cap=1 << 20)).stdout == data


async def test_bad_requests(ch: ExecChannel) -> None:
    with pytest.raises(VMError, match="does not exist"):
        await ch.run("true", cwd="/nope/nowhere")
    with pytest.raises(VMError, match="non-empty"):
        await ch.run("  ")
    # Requests that blow up inside the helper are still answered (never a call that waits forever).
    with pytest.raises(VMError, match="Malformed"):
        await asyncio.wait_for(ch.run("echo a\x00b"), 5)
    with pytest.raises(VMError):
        await asyncio.wait_for(ch.open_tunnel(70000), 5)


# ---- files -------------------------------------------------------------------------------------------


async def test_file_ops(vmd: LocalVMD, ch: ExecChannel) -> None:
    await ch.write_file("a/b/c.txt", b"hello", mode=0o640)
    assert (vmd.workspace / "a/b/c.txt").read_bytes() == b"hello"
    assert (vmd.workspace / "a/b/c.txt").stat().st_mode & 0o777 == 0o640
    assert await ch.read_file("a/b/c.txt", 100) == b"hello"
    assert await ch.read_file(str(vmd.workspace / "a/b/c.txt"), 5) == b"hello"
    entry = await ch.stat("a/b/c.txt")
    assert (entry.name, entry.type, entry.size) == ("c.txt", "file", 5)
    (vmd.workspace / "a/link").symlink_to("b")
    assert [(e.name, e.type) for e in await ch.list_dir("a")] == [("b", "dir"), ("link", "link")]
    for call, code in [
        (ch.read_file("a/b/c.txt", 4), "too_large"),
        (ch.read_file("missing", 10), "not_found"),
        (ch.read_file("a", 10), "is_dir"),
        (ch.write_file("a", b"x"), "is_dir"),
        (ch.write_file("a/b/c.txt/d", b"x"), "not_dir"),
        (ch.list_dir("missing"), "not_found"),
    ]:
        with pytest.raises(VMFileError) as info:
            await call
        assert info.value.code == code, info.value
    assert not [p for p in (vmd.workspace / "a/b").iterdir() if p.name != "c.txt"]  # no temp files left


def _tar(*members: tuple[str, str, Any]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            info.linkname = value or ""
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(("members", "culprit"), [
    ([("../x", "file", b"2")], "../x"),
    ([("/etc/x", "file", b"2")], "/etc/x"),
    ([("etc", "sym", "/etc"), ("etc/x", "file", b"2")], "etc"),
    ([("up", "sym", "../../outside")], "up"),
    ([("d/up", "sym", "sub/../../..")], "d/up"),
    ([("hl", "hard", "../outside")], "hl"),
    ([("pipe", "fifo", None)], "pipe"),
    ([("null", "chr", None)], "null"),
    ([("s", "sym", "sub"), ("s/x", "file", b"2")], "s/x"),
])
async def test_archive_in_refuses_unsafe_members(vmd: LocalVMD, ch: ExecChannel, members: Any, culprit: str) -> None:
    with pytest.raises(VMFileError) as info:
        await ch.archive_in("dest", _tar(("ok.txt", "file", b"1"), *members))
    assert info.value.code == "unsafe_archive"
    assert repr(culprit) in str(info.value) and "Nothing was extracted" in str(info.value)
    assert not (vmd.workspace / "dest" / "ok.txt").exists()
    assert not (vmd.root / "outside").exists()


async def test_archive_in_refuses_existing_symlink_out(vmd: LocalVMD, ch: ExecChannel) -> None:
    (vmd.workspace / "dest").mkdir()
    (vmd.workspace / "dest" / "esc").symlink_to(vmd.root)
    with pytest.raises(VMFileError, match="esc/x"):
        await ch.archive_in("dest", _tar(("esc/x", "file", b"2")))
    assert not (vmd.root / "x").exists()


async def test_archive_round_trips(vmd: LocalVMD, ch: ExecChannel) -> None:
    await ch.run("mkdir -p proj/src && echo hi > proj/src/a.py && printf '\\x00\\x01' > proj/bin && "
                 "ln -s src/a.py proj/link")
    tar_bytes = await ch.archive_out("proj", "tar", 1 << 20)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert {"proj", "proj/src", "proj/src/a.py", "proj/bin", "proj/link"} == set(tar.getnames())
    await ch.archive_in("copy", tar_bytes)
    assert (vmd.workspace / "copy/proj/src/a.py").read_bytes() == b"hi\n"
    assert (vmd.workspace / "copy/proj/bin").read_bytes() == b"\x00\x01"
    assert os.readlink(vmd.workspace / "copy/proj/link") == "src/a.py"
    with zipfile.ZipFile(io.BytesIO(await ch.archive_out("proj", "zip", 1 << 20))) as zf:
        assert zf.read("proj/src/a.py") == b"hi\n" and "proj/bin" in zf.namelist()
    with pytest.raises(VMFileError) as info:
        await ch.archive_out("proj", "tar", 100)
    assert info.value.code == "too_large"


# ---- tunnel, stats, connections ----------------------------------------------------------------------


async def test_tunnel_carries_bytes_both_ways(ch: ExecChannel) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HELLO ")
        while data := await reader.read(1 << 16):
            writer.write(data.upper())
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        tunnel = await ch.open_tunnel(port)
        assert await tunnel.read() == b"HELLO "
        payload = os.urandom(300_000).hex().encode()
        await tunnel.write(payload)
        got = b""
        while len(got) < len(payload):
            got += await tunnel.read()
        assert got == payload.upper()
        assert (await ch.stats()).tunnels_open == 1
        await tunnel.close()
        await asyncio.sleep(0.1)
        assert (await ch.stats()).tunnels_open == 0
    with pytest.raises(VMError, match=f"port {port}"):
        await ch.open_tunnel(port)


async def test_stats(ch: ExecChannel) -> None:
    job = await ch.exec("sleep 2")
    stats = await ch.stats()
    assert stats.jobs_running == 1 and stats.memory_bytes > 0 and stats.uptime_s > 0
    assert stats.user_processes >= 1 and stats.cpu_usage_ns >= 0
    await job.kill()


async def test_helper_survives_disconnect_and_serves_many(vmd: LocalVMD, ch: ExecChannel) -> None:
    job = await ch.exec("sleep 0.5; echo done > marker")
    await ch.close()
    with pytest.raises(ChannelClosed, match="was lost while"):
        await ch.run("true")
    assert job.done
    one, two = await vmd.channel(), await vmd.channel()
    assert (await asyncio.gather(one.run("echo 1"), two.run("echo 2")))[1].stdout == b"2\n"
    await asyncio.sleep(0.8)
    assert (vmd.workspace / "marker").read_text() == "done\n"


async def test_calls_in_flight_fail_when_the_helper_dies(vmd: LocalVMD, ch: ExecChannel) -> None:
    job = await ch.exec("sleep 5")
    pending = asyncio.ensure_future(ch.run("sleep 5"))
    await asyncio.sleep(0.2)
    vmd.stop()
    with pytest.raises(ChannelClosed, match="lost while running `sleep 5`; run it again"):
        await job.wait()
    with pytest.raises(ChannelClosed):
        await pending
    await asyncio.wait_for(ch.wait_closed(), 5)
    assert ch.closed


async def test_docker_framed_stream(vmd: LocalVMD) -> None:
    """The channel demultiplexes Docker's 8-byte stream headers, split anywhere, stderr logged."""
    vreader, vwriter = await vmd.connect()
    server_side: list[asyncio.StreamWriter] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_side.append(writer)
        writer.write(struct.pack(">BxxxL", 2, 6) + b"note\n\n")

        async def up() -> None:
            while data := await reader.read(1 << 16):
                vwriter.write(data)
            vwriter.close()

        task = asyncio.ensure_future(up())
        while data := await vreader.read(1 << 16):
            framed = struct.pack(">BxxxL", 1, len(data)) + data
            for i in range(0, len(framed), 7):
                writer.write(framed[i : i + 7])
        writer.close()
        await task

    path = str(vmd.root / "framed.sock")
    server = await asyncio.start_unix_server(relay, path)
    async with server:
        reader, writer = await asyncio.open_unix_connection(path)
        channel = await ExecChannel.from_streams(reader, writer, docker_framed=True)
        assert (await channel.run("printf abc")).stdout == b"abc"
        await channel.close()


# ---- notifications -----------------------------------------------------------------------------------


def _notify(vmd: LocalVMD, *args: str, conversation: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(vmd.env, AGENT_CONVERSATION=conversation or "")
    return subprocess.run([sys.executable, str(VMD_DIR / "notify"), *args], env=env, capture_output=True,
                          text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)


async def test_notify_reaches_the_bot_and_is_acked(vmd: LocalVMD) -> None:
    got: list[Notification] = []
    arrived = asyncio.Event()

    async def on_notify(note: Notification) -> None:
        got.append(note)
        arrived.set()

    channel = await vmd.channel(on_notify)
    cmd = f"{sys.executable} {VMD_DIR / 'notify'} 'build done'"
    assert (await channel.run(cmd, env={"AGENT_CONVERSATION": "conv-7"})).result.ok
    await asyncio.wait_for(arrived.wait(), 5)
    assert (got[0].text, got[0].conversation) == ("build done", "conv-7")
    await asyncio.sleep(0.2)  # the ack
    await channel.close()
    late = await vmd.channel(on_notify)
    await asyncio.sleep(0.3)
    assert len(got) == 1
    await late.close()


async def test_notifications_wait_for_a_bot_and_survive_restarts(vmd: LocalVMD) -> None:
    await vmd.connect()  # vmd is up
    proc = await asyncio.to_thread(_notify, vmd, "x" * 3000, conversation=None)
    assert proc.returncode == 0 and "truncated" in proc.stderr
    assert (await asyncio.to_thread(_notify, vmd, "second")).returncode == 0
    vmd.stop()
    vmd.start()
    got: list[Notification] = []

    async def failing(note: Notification) -> None:
        raise RuntimeError("discord is down")

    await vmd.channel(failing)  # not acked: stays pending
    await asyncio.sleep(0.2)

    async def on_notify(note: Notification) -> None:
        got.append(note)

    await vmd.channel(on_notify)
    for _ in range(50):
        if len(got) == 2:
            break
        await asyncio.sleep(0.05)
    assert [n.text for n in got] == ["x" * 1884 + " [... truncated]", "second"]
    assert len(got[0].text) == 1900 and got[0].conversation is None
    await asyncio.sleep(0.2)
    vmd.stop()
    vmd.start()
    await vmd.channel(on_notify)
    await asyncio.sleep(0.3)
    assert len(got) == 2


async def test_notify_without_helper(tmp_path: Path) -> None:
    proc = await asyncio.to_thread(_notify, LocalVMD(tmp_path), "hi")
    assert proc.returncode == 1 and "helper (vmd) is not running" in proc.stderr
    usage = await asyncio.to_thread(_notify, LocalVMD(tmp_path))
    assert usage.returncode == 2 and "usage" in usage.stderr
