"""ExecChannel against the real agent image in real containers (hardened as the manager runs them).

Containers are created here with the docker SDK, labelled agentbot.test=channel, and always removed
with their volumes (docker-py tests/integration/base.py style).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import docker
import pytest

from bot.errors import VMError, VMFileError
from bot.vm.channel import ExecChannel
from bot.vm.protocol import Notification

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("AGENTBOT_TEST_IMAGE", "agentbot-vm:latest")
LABELS = {"agentbot.test": "channel"}
HARDENING: dict[str, Any] = {
    "cap_drop": ["ALL"], "cap_add": ["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"],
    "security_opt": ["no-new-privileges"], "pids_limit": 256,
}


@pytest.fixture(scope="module")
def make_vm(docker_client: docker.DockerClient) -> Iterator[Callable[..., Any]]:
    """Start containers of the agent image on a fresh named /workspace volume; remove all at the end."""
    created: list[tuple[Any, Any]] = []

    def make(desktop: bool = False, mem_limit: str = "512m", **extra: Any) -> Any:
        volume = docker_client.volumes.create(f"agentbot-test-channel-{uuid.uuid4().hex[:10]}", labels=LABELS)
        try:
            container = docker_client.containers.run(
                IMAGE, detach=True, labels=LABELS, environment={"VM_DESKTOP": "1" if desktop else "0"},
                volumes={volume.name: {"bind": "/workspace", "mode": "rw"}}, mem_limit=mem_limit,
                **HARDENING, **extra,
            )
        except BaseException:
            volume.remove(force=True)
            raise
        created.append((container, volume))
        return container

    yield make
    for container, volume in created:
        container.remove(force=True, v=True)
        volume.remove(force=True)


@pytest.fixture(scope="module")
def vm(make_vm: Callable[..., Any]) -> Any:
    return make_vm()


@pytest.fixture
async def ch(docker_client: docker.DockerClient, vm: Any) -> AsyncIterator[ExecChannel]:
    channel = await ExecChannel.open_docker(docker_client.api, vm.id)
    yield channel
    await channel.close()


async def test_output_streams_before_the_command_ends(ch: ExecChannel) -> None:
    start = time.monotonic()
    job = await ch.exec("echo a; sleep 1; echo b")
    first = await job.__anext__()
    assert first.data == b"a\n" and time.monotonic() - start < 0.6
    assert [c.data async for c in job] == [b"b\n"]
    result = await job.wait()
    assert result.ok and result.duration >= 1


async def test_two_commands_overlap(ch: ExecChannel) -> None:
    cmd = "date +%s.%N; sleep 1; date +%s.%N"
    a, b = await asyncio.gather(ch.run(cmd), ch.run(cmd))
    (a0, a1), (b0, b1) = (map(float, r.stdout.split()) for r in (a, b))
    assert max(a0, b0) < min(a1, b1)


async def test_cd_and_stdin(ch: ExecChannel) -> None:
    await ch.run("cd /tmp", session="cd-test")
    assert (await ch.run("pwd", session="cd-test")).stdout == b"/tmp\n"
    assert (await ch.run("pwd")).stdout == b"/workspace\n"
    job = await ch.exec("read x; echo got $x", stdin=True)
    await job.write(b"hello\n")
    assert b"".join([c.data async for c in job]) == b"got hello\n"


async def test_background_server_keeps_serving(ch: ExecChannel) -> None:
    start = time.monotonic()
    result = await ch.run("python3 -m http.server 8000 >/dev/null 2>&1 &")
    assert result.result.ok and time.monotonic() - start < 0.5
    again = await ch.run("sleep 100 &")
    assert again.result.ok and again.result.duration < 0.5
    page = await ch.run("for i in $(seq 50); do curl -sf localhost:8000/ && break; sleep 0.1; done")
    assert b"Directory listing" in page.stdout


async def test_timeout_leaves_no_process(ch: ExecChannel) -> None:
    result = await ch.run("sleep 101 & setsid sleep 102; wait", timeout=1)
    assert (result.code, result.result.reason) == (137, "timeout")
    await asyncio.sleep(0.2)
    ps = await ch.run("ps -eo stat,args | grep -E 'sleep 10[12]' | grep -v grep || true")
    assert ps.stdout == b""


async def test_big_output_is_capped(ch: ExecChannel) -> None:
    result = await ch.run("head -c 10000000 /dev/urandom", cap=65536)
    assert result.result.dropped > 0 and len(result.stdout) <= 65536 + 64
    assert f"[... {result.result.dropped:,} bytes dropped ...]".encode() in result.stdout


async def test_binary_output_is_exact(ch: ExecChannel) -> None:
    data = (await ch.run("head -c 4096 /dev/urandom | tee /tmp/rand")).stdout
    digest = (await ch.run("sha256sum /tmp/rand")).stdout.split()[0].decode()
    assert len(data) == 4096 and hashlib.sha256(data).hexdigest() == digest


async def test_runs_unprivileged(ch: ExecChannel) -> None:
    result = await ch.run("id -u; grep CapEff /proc/self/status; test -e /var/run/docker.sock && echo SOCK")
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "1000" and lines[1].split()[1] == "0000000000000000" and "SOCK" not in lines


def _tar(*members: tuple[str, str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(bytes(value)))
    return buf.getvalue()


@pytest.mark.parametrize("members", [
    [("../x", "file", b"x")],
    [("/etc/x", "file", b"x")],
    [("etc", "sym", "/etc"), ("etc/x", "file", b"x")],
])
async def test_archive_in_refuses_escapes(ch: ExecChannel, members: Any) -> None:
    with pytest.raises(VMFileError) as info:
        await ch.archive_in("unsafe", _tar(("first.txt", "file", b"1"), *members))
    assert info.value.code == "unsafe_archive" and "member" in info.value.message
    assert (await ch.run("ls -A unsafe; ls /x /etc/x 2>/dev/null || true")).stdout == b""


async def test_archive_round_trip(ch: ExecChannel) -> None:
    await ch.run("rm -rf src copy && mkdir -p src/sub && echo one > src/a && head -c 3000 /dev/urandom > src/sub/b")
    tar_bytes = await ch.archive_out("src", "tar", 1 << 20)
    await ch.archive_in("copy", tar_bytes)
    assert (await ch.run("diff -r src copy/src && echo SAME")).stdout == b"SAME\n"
    assert (await ch.run("stat -c %U copy/src/sub/b")).stdout == b"agent\n"
    assert await ch.read_file("copy/src/a", 100) == b"one\n"
    with pytest.raises(VMFileError) as info:
        await ch.read_file("copy/src/sub/b", 100)
    assert info.value.code == "too_large"


async def test_notify_from_inside_reaches_on_notify(docker_client: docker.DockerClient, vm: Any) -> None:
    got: asyncio.Queue[Notification] = asyncio.Queue()

    async def on_notify(note: Notification) -> None:
        await got.put(note)

    channel = await ExecChannel.open_docker(docker_client.api, vm.id, on_notify=on_notify)
    try:
        result = await channel.run("notify 'build done'", env={"AGENT_CONVERSATION": "thread-42"})
        assert result.result.ok, result.stderr
        note = await asyncio.wait_for(_next_matching(got, "build done"), 5)
        assert note.conversation == "thread-42"
    finally:
        await channel.close()


async def _next_matching(queue: asyncio.Queue[Notification], text: str) -> Notification:
    while (note := await queue.get()).text != text:
        pass
    return note


async def test_notification_waits_for_the_next_channel(docker_client: docker.DockerClient, vm: Any) -> None:
    text = f"queued {uuid.uuid4().hex[:6]}"
    code, out = await asyncio.to_thread(vm.exec_run, ["notify", text], user="agent",
                                        environment={"AGENT_CONVERSATION": "c-9"})
    assert code == 0, out
    got: list[Notification] = []

    async def on_notify(note: Notification) -> None:
        got.append(note)

    channel = await ExecChannel.open_docker(docker_client.api, vm.id, on_notify=on_notify)
    for _ in range(50):
        if any(n.text == text for n in got):
            break
        await asyncio.sleep(0.05)
    assert [(n.text, n.conversation) for n in got if n.text == text] == [(text, "c-9")]
    await asyncio.sleep(0.2)  # the ack travels
    await channel.close()
    got.clear()
    channel = await ExecChannel.open_docker(docker_client.api, vm.id, on_notify=on_notify)
    await asyncio.sleep(0.5)
    await channel.close()
    assert not [n for n in got if n.text == text]


async def test_memory_hog_is_reported_as_oom(docker_client: docker.DockerClient, make_vm: Callable[..., Any]) -> None:
    small = make_vm(mem_limit="256m")
    channel = await ExecChannel.open_docker(docker_client.api, small.id)
    try:
        result = await channel.run("""python3 -c "b = bytearray(2 * 1024**3); b[::4096] = b'x' * len(b[::4096])" """)
        assert (result.code, result.result.reason) == (137, "oom")
        assert (await channel.run("echo alive")).stdout == b"alive\n"  # the helper survived
        stats = await channel.stats()
        assert stats.memory_limit == 256 * 1024**2 and stats.jobs_running == 0
    finally:
        await channel.close()


async def test_desktop_through_the_tunnel(docker_client: docker.DockerClient, make_vm: Callable[..., Any]) -> None:
    desktop = make_vm(desktop=True, network_mode="none")
    channel = await ExecChannel.open_docker(docker_client.api, desktop.id)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                tunnel = await channel.open_tunnel(5900)
                break
            except VMError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        greeting = b""
        while len(greeting) < 12 and (chunk := await asyncio.wait_for(tunnel.read(), 10)):
            greeting += chunk
        assert greeting.startswith(b"RFB 003.008")
        stats = await channel.stats()
        assert stats.tunnels_open == 1 and stats.user_processes == 0  # the desktop does not count
        await tunnel.close()
    finally:
        await channel.close()
