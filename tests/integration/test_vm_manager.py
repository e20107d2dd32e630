"""VMManager against the real engine and image: isolation, persistence, adoption, reaping, hardening."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import docker
import pytest

from bot.errors import BotError, ChannelClosed
from bot.vm.channel import Notification
from bot.vm.manager import VMKey
from bot.vm.reaper import reap_once

pytestmark = pytest.mark.docker

ALICE = VMKey.for_user(1001)
BOB = VMKey.for_user(1002)


async def sh(manager: Any, key: VMKey, cmd: str, **kwargs: Any) -> tuple[int, str]:
    done = await (await manager.channel(key)).run(cmd, **kwargs)
    return done.result.code, (done.stdout + done.stderr).decode(errors="replace")


def container(client: docker.DockerClient, manager: Any, key: VMKey) -> Any:
    return client.containers.get(manager.container_name(key))


async def test_two_users_get_two_isolated_vms(make_manager: Any, docker_client: docker.DockerClient) -> None:
    manager = await make_manager()
    await asyncio.gather(manager.ensure(ALICE), manager.ensure(BOB))
    alice, bob = container(docker_client, manager, ALICE), container(docker_client, manager, BOB)
    assert alice.id != bob.id
    assert alice.labels["agentbot.owner"] == "1001" and alice.labels["agentbot.scope"] == "user-1001"

    code, _ = await sh(manager, ALICE, "python3 -m http.server 8000 >/dev/null 2>&1 &")
    assert code == 0
    alice_ip = alice.attrs["NetworkSettings"]["Networks"][manager.network_name]["IPAddress"]
    # Alice's server answers on her own address, so a failure from Bob is the network's doing.
    code, out = await sh(manager, ALICE, f"sleep 0.5; curl -s -o /dev/null -w '%{{http_code}}' http://{alice_ip}:8000/")
    assert (code, out) == (0, "200")
    code, _ = await sh(manager, BOB, f"curl -s -m 3 http://{alice_ip}:8000/")
    assert code != 0, "Bob reached Alice's VM over the network"


async def test_workspace_survives_stop_start_and_recreation(make_manager: Any,
                                                            docker_client: docker.DockerClient) -> None:
    manager = await make_manager()
    channel = await manager.channel(ALICE)
    await channel.write_file("notes/keep.txt", b"still here")
    first_id = container(docker_client, manager, ALICE).id

    await manager.stop(ALICE)
    assert container(docker_client, manager, ALICE).status == "exited"
    assert await (await manager.channel(ALICE)).read_file("notes/keep.txt", 1024) == b"still here"

    await manager.reset(ALICE)
    assert container(docker_client, manager, ALICE).id != first_id
    assert await (await manager.channel(ALICE)).read_file("notes/keep.txt", 1024) == b"still here"

    await manager.destroy(ALICE)
    assert (await manager.status(ALICE)).state == "missing"
    assert await (await manager.channel(ALICE)).list_dir(".") == []


async def test_restarted_bot_adopts_vm_and_collects_queued_notifications(
        make_manager: Any, docker_client: docker.DockerClient) -> None:
    first = await make_manager()
    await first.ensure(ALICE)
    vm_id = container(docker_client, first, ALICE).id
    await first.__aexit__(None, None, None)  # the bot stops; the VM keeps running

    vm = container(docker_client, first, ALICE)
    result = vm.exec_run(["notify", "tests passed"], user="agent", environment={"AGENT_CONVERSATION": "c42"})
    assert result.exit_code == 0, result.output

    received: list[tuple[VMKey, Notification]] = []
    got_one = asyncio.Event()

    async def on_notify(key: VMKey, notification: Notification) -> None:
        received.append((key, notification))
        got_one.set()

    second = await make_manager(on_notify=on_notify)
    await asyncio.wait_for(got_one.wait(), 10)
    assert [(k, n.text, n.conversation) for k, n in received] == [(ALICE, "tests passed", "c42")]
    assert container(docker_client, second, ALICE).id == vm_id  # reused, not recreated
    code, out = await sh(second, ALICE, "echo hi")
    assert (code, out) == (0, "hi\n")


async def test_reaper_stops_idle_vm_but_not_one_with_a_background_job(
        make_manager: Any, docker_client: docker.DockerClient) -> None:
    manager = await make_manager(vm_idle_timeout=5)
    await asyncio.gather(manager.ensure(ALICE), manager.ensure(BOB))
    code, _ = await sh(manager, BOB, "(sleep 60; notify done) >/dev/null 2>&1 &")
    assert code == 0
    with manager.activity(ALICE):  # a turn is running: never reaped
        assert await reap_once(manager, now=time.monotonic() + 60) == []

    stopped = await reap_once(manager, now=time.monotonic() + 60)
    assert stopped == [ALICE]
    assert container(docker_client, manager, ALICE).status == "exited"
    assert container(docker_client, manager, BOB).status == "running"

    code, out = await sh(manager, ALICE, "echo back")  # the next use starts it again
    assert (code, out) == (0, "back\n")


async def test_vm_is_hardened(make_manager: Any, docker_client: docker.DockerClient,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "bot-secret-token-123")
    manager = await make_manager()
    code, out = await sh(manager, ALICE, "id -u; grep CapEff /proc/self/status; "
                                         "ls /var/run/docker.sock /run/docker.sock 2>/dev/null | wc -l; env")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "1000"
    assert lines[1].split()[1] == "0000000000000000"
    assert lines[2] == "0"  # no docker socket
    assert "bot-secret-token-123" not in out and "DISCORD_TOKEN" not in out
    host = container(docker_client, manager, ALICE).attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == 256 and host["Memory"] == 512 * 1024**2


async def test_fork_bomb_stays_inside_and_reset_recovers(make_manager: Any) -> None:
    manager = await make_manager(vm_pids_limit=64)
    channel = await manager.channel(ALICE)
    bomb = await channel.exec("bomb() { bomb | bomb & }; bomb", timeout=3)
    await asyncio.wait_for(bomb.wait(), 30)
    await manager.reset(ALICE)
    code, out = await sh(manager, ALICE, "ps -e --no-headers | wc -l")
    assert code == 0 and int(out) < 20


async def test_memory_hog_is_reported_killed_for_memory(make_manager: Any,
                                                        docker_client: docker.DockerClient) -> None:
    manager = await make_manager(vm_memory="256m")
    await manager.ensure(ALICE)
    vm = container(docker_client, manager, ALICE)
    since = int(time.time()) - 1
    done = await (await manager.channel(ALICE)).run(
        "python3 -c 'b = bytearray(1024**3); b[::4096] = b\"x\" * len(b[::4096])'", timeout=60)
    assert (done.result.code, done.result.reason) == (137, "oom")
    events = docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                  filters={"container": vm.id, "event": "oom"})
    assert any(event["status"] == "oom" for event in events)


async def test_dead_container_is_recreated_and_the_call_in_flight_fails_clearly(
        make_manager: Any, docker_client: docker.DockerClient) -> None:
    manager = await make_manager()
    channel = await manager.channel(ALICE)
    await channel.write_file("kept.txt", b"yes")
    job = await channel.exec("sleep 30")
    await asyncio.to_thread(container(docker_client, manager, ALICE).kill)
    with pytest.raises(ChannelClosed) as caught:
        await asyncio.wait_for(job.wait(), 15)
    assert "run it again" in str(caught.value)
    assert await (await manager.channel(ALICE)).read_file("kept.txt", 10) == b"yes"
    await asyncio.to_thread(container(docker_client, manager, ALICE).remove, force=True)
    assert await (await manager.channel(ALICE)).read_file("kept.txt", 10) == b"yes"


async def test_network_none_still_runs_everything_but_outbound(make_manager: Any,
                                                               docker_client: docker.DockerClient) -> None:
    manager = await make_manager(vm_network="none")
    code, out = await sh(manager, ALICE, "cd /tmp && pwd && curl -s -m 3 http://deb.debian.org/ >/dev/null; echo $?")
    assert code == 0 and out.splitlines()[0] == "/tmp" and out.splitlines()[1] != "0"
    assert container(docker_client, manager, ALICE).attrs["HostConfig"]["NetworkMode"] == "none"


async def test_desktop_greets_through_the_tunnel_without_published_ports(
        make_manager: Any, docker_client: docker.DockerClient) -> None:
    manager = await make_manager(vm_desktop=True)
    channel = await manager.channel(ALICE)
    deadline = time.monotonic() + 20
    greeting = b""
    while time.monotonic() < deadline and not greeting.startswith(b"RFB"):
        try:
            tunnel = await channel.open_tunnel(5900)
            greeting = await asyncio.wait_for(tunnel.read(), 5)
            await tunnel.close()
        except BotError:  # x11vnc not listening yet
            await asyncio.sleep(0.1)
    assert greeting.startswith(b"RFB 003.008")
    attrs = container(docker_client, manager, ALICE).attrs
    assert not attrs["HostConfig"]["PortBindings"]
    assert all(not bindings for bindings in (attrs["NetworkSettings"]["Ports"] or {}).values())


async def test_a_dropped_channel_is_reopened(make_manager: Any, docker_client: docker.DockerClient) -> None:
    manager = await make_manager()
    channel = await manager.channel(ALICE)
    job = await channel.exec("sleep 30")
    vm = container(docker_client, manager, ALICE)
    await asyncio.to_thread(vm.exec_run, ["pkill", "-f", "/opt/vmd/attach.py"], user="agent")
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(job.wait(), 10)
    again = await manager.channel(ALICE)
    assert again is not channel
    code, out = await sh(manager, ALICE, "echo reopened")
    assert (code, out) == (0, "reopened\n")
