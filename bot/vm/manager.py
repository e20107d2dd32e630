"""VMManager: one persistent container per user (or per thread), reached through an exec channel.

A VM is found by name and labels, so a restarted bot adopts the containers of the last one.
/workspace is a named volume that outlives the container. The manager reopens a dropped channel,
starts a stopped VM on demand, recreates a vanished one on the same volume, and its reaper stops
VMs that have been idle for `VM_IDLE_TIMEOUT` (see `bot.vm.reaper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import docker

from bot.config import Settings
from bot.errors import VMError
from bot.vm import docker_ops
from bot.vm.channel import ExecChannel, Notification
from bot.vm.protocol import VMStats
from bot.vm.docker_ops import LABEL_APP, LABEL_OWNER, LABEL_SCOPE, ContainerSpec, ContainerState

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class VMKey:
    """Whose VM: the owner, and the scope key (`user-<id>` or `thread-<id>`)."""

    owner_id: int
    scope: str

    @classmethod
    def for_user(cls, owner_id: int) -> VMKey:
        return cls(owner_id, f"user-{owner_id}")

    @classmethod
    def for_thread(cls, owner_id: int, thread_id: int | str) -> VMKey:
        return cls(owner_id, f"thread-{thread_id}")


NotifySink = Callable[[VMKey, Notification], Awaitable[None]]


@dataclass(frozen=True)
class VMStatus:
    """What /status shows about one VM."""

    key: VMKey
    name: str
    state: str  # running, stopped, missing
    uptime_s: float = 0.0
    memory_bytes: int = 0
    memory_limit: int = 0
    cpu_percent: float = 0.0


@dataclass
class VMRecord:
    """The manager's live record of one VM."""

    key: VMKey
    name: str
    container_id: str = ""
    channel: ExecChannel | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    busy: int = 0  # turns running now
    last_active: float = field(default_factory=time.monotonic)
    cpu_sample: tuple[float, int] | None = None  # (monotonic time, cpu_usage_ns)


class VMManager:
    """Creates, adopts, starts, stops and recreates VMs; hands out live exec channels."""

    def __init__(self, settings: Settings, client: docker.DockerClient, *, on_notify: NotifySink) -> None:
        """`on_notify` must store the notification: the VM forgets it once the sink returns."""
        self.settings = settings
        self.client = client
        self.on_notify = on_notify
        self._vms: dict[VMKey, VMRecord] = {}
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def network_name(self) -> str | None:
        if self.settings.vm_network == "none":
            return None
        if self.settings.vm_network == "bot":
            return f"{self.settings.app_name}-net"
        return self.settings.vm_network

    async def __aenter__(self) -> VMManager:
        await asyncio.to_thread(docker_ops.ping, self.client)
        if self.network_name is not None:
            await asyncio.to_thread(docker_ops.ensure_network, self.client, self.network_name,
                                    self.settings.app_name)
        await self.adopt()
        if self.settings.vm_idle_timeout > 0:
            from bot.vm.reaper import run_reaper  # a module of its own: the idle policy

            self._reaper = asyncio.create_task(run_reaper(self), name="vm-reaper")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the channels; the VMs keep running (a restarted bot adopts them)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(self._close_channel(vm) for vm in self._vms.values()))

    async def adopt(self) -> int:
        """Find the VMs of a previous bot by label and reattach the running ones (collecting the
        notifications they queued while no bot was attached). Returns how many were adopted."""
        states = await asyncio.to_thread(docker_ops.list_app, self.client, self.settings.app_name)
        running = []
        for state in states:
            try:
                key = VMKey(int(state.labels[LABEL_OWNER]), state.labels[LABEL_SCOPE])
            except (KeyError, ValueError):
                log.warning("container %s has our app label but no owner/scope: left alone", state.name)
                continue
            vm = self._vms.setdefault(key, VMRecord(key, state.name, state.id))
            if state.status == "running":
                running.append(vm)
        results = await asyncio.gather(*(self._ready(vm) for vm in running), return_exceptions=True)
        for vm, result in zip(running, results):
            if isinstance(result, BaseException):
                log.warning("could not reattach %s: %s", vm.name, result)
        log.info("adopted %d VM(s), %d running", len(states), len(running))
        return len(states)

    # -- naming ------------------------------------------------------------------------------

    def key_for(self, owner_id: int, thread_id: int | str | None = None) -> VMKey:
        """The VM key for a conversation, following VM_SCOPE (thread scope needs a thread)."""
        if self.settings.vm_scope == "thread" and thread_id is not None:
            return VMKey.for_thread(owner_id, thread_id)
        return VMKey.for_user(owner_id)

    def container_name(self, key: VMKey) -> str:
        return f"{self.settings.app_name}-{key.scope}"

    def volume_name(self, key: VMKey) -> str:
        return f"{self.container_name(key)}-workspace"

    def _spec(self, key: VMKey) -> ContainerSpec:
        s = self.settings
        return ContainerSpec(
            name=self.container_name(key), image=s.vm_image, volume=self.volume_name(key),
            network=self.network_name,
            labels={LABEL_APP: s.app_name, LABEL_OWNER: str(key.owner_id), LABEL_SCOPE: key.scope},
            environment={"VM_DESKTOP": "1" if s.vm_desktop else "0"},
            mem_limit=s.vm_memory, nano_cpus=int(s.vm_cpus * 1e9), pids_limit=s.vm_pids_limit,
        )

    def _record(self, key: VMKey) -> VMRecord:
        return self._vms.setdefault(key, VMRecord(key, self.container_name(key)))

    # -- the main entry points ---------------------------------------------------------------

    async def channel(self, key: VMKey) -> ExecChannel:
        """A live channel into the VM: created, started or reattached as needed. Counts as use
        (the reaper's idle clock starts again)."""
        vm = self._record(key)
        vm.last_active = time.monotonic()
        return await self._live_channel(vm)

    async def _live_channel(self, vm: VMRecord) -> ExecChannel:
        if vm.channel is not None and not vm.channel.closed:
            return vm.channel
        async with vm.lock:
            return await self._ready(vm)

    async def ensure(self, key: VMKey) -> str:
        """Make sure the VM exists, runs and answers; returns its container name."""
        await self.channel(key)
        return self.container_name(key)

    @contextlib.contextmanager
    def activity(self, key: VMKey) -> Iterator[None]:
        """Marks a turn running in this VM: the reaper never stops a busy VM."""
        vm = self._record(key)
        vm.busy += 1
        try:
            yield
        finally:
            vm.busy -= 1
            vm.last_active = time.monotonic()

    async def stop(self, key: VMKey, *, only_if_idle: bool = False) -> bool:
        """Stop the VM (the workspace stays). With only_if_idle, a VM a turn started using meanwhile
        is left running. Returns whether it was stopped."""
        vm = self._record(key)
        async with vm.lock:
            if only_if_idle and vm.busy:
                return False
            await self._close_channel(vm)
            if vm.container_id:
                await asyncio.to_thread(docker_ops.stop, self.client, vm.container_id)
            log.info("stopped VM %s", vm.name)
            return True

    async def reset(self, key: VMKey) -> None:
        """Recreate the container (a fork bomb, a broken system): /workspace is kept."""
        vm = self._record(key)
        async with vm.lock:
            await self._close_channel(vm)
            await asyncio.to_thread(docker_ops.remove, self.client, vm.name)
            vm.container_id = ""
            await self._ready(vm)
            log.info("reset VM %s (workspace kept)", vm.name)

    async def destroy(self, key: VMKey) -> None:
        """Remove the container and its workspace volume."""
        vm = self._record(key)
        async with vm.lock:
            await self._close_channel(vm)
            await asyncio.to_thread(docker_ops.remove, self.client, vm.name, self.volume_name(key))
            self._vms.pop(key, None)
            log.info("destroyed VM %s and its workspace", vm.name)

    async def status(self, key: VMKey) -> VMStatus:
        """State, uptime, memory and CPU; a stopped VM is not started for this."""
        vm = self._record(key)
        state = await asyncio.to_thread(docker_ops.find, self.client, vm.name)
        if state is None:
            return VMStatus(key, vm.name, "missing")
        if state.status != "running":
            return VMStatus(key, vm.name, "stopped")
        stats = await self.stats(vm)
        cpu = await self._cpu_percent(vm, stats.cpu_usage_ns)
        return VMStatus(key, vm.name, "running", uptime_s=stats.uptime_s, memory_bytes=stats.memory_bytes,
                        memory_limit=stats.memory_limit or self.settings.vm_memory, cpu_percent=cpu)

    async def stats(self, vm: VMRecord) -> VMStats:
        """The helper's readings of a running VM, within STATS_TIMEOUT_S. Looking is not using:
        the reaper's idle clock is left alone."""
        try:
            return await asyncio.wait_for((await self._live_channel(vm)).stats(), STATS_TIMEOUT_S)
        except TimeoutError as exc:
            raise VMError(f"The VM {vm.name} did not answer within {STATS_TIMEOUT_S:g} s.") from exc

    async def statuses(self) -> list[VMStatus]:
        """Every VM of this app (for admins); one that cannot be read shows as unknown."""
        await self.adopt_records()
        keys = list(self._vms)
        results = await asyncio.gather(*(self.status(key) for key in keys), return_exceptions=True)
        return [r if isinstance(r, VMStatus) else VMStatus(k, self.container_name(k), "unknown")
                for k, r in zip(keys, results)]

    async def adopt_records(self) -> None:
        """Learn about VMs created by other managers, without attaching to them."""
        for state in await asyncio.to_thread(docker_ops.list_app, self.client, self.settings.app_name):
            with contextlib.suppress(KeyError, ValueError):
                key = VMKey(int(state.labels[LABEL_OWNER]), state.labels[LABEL_SCOPE])
                self._vms.setdefault(key, VMRecord(key, state.name, state.id))

    def records(self) -> list[VMRecord]:
        """The VMs this manager knows (for the reaper and admin views)."""
        return list(self._vms.values())

    # -- internals ---------------------------------------------------------------------------

    async def _cpu_percent(self, vm: VMRecord, usage_ns: int) -> float:
        """CPU use since the last sample (one core = 100 %); the first call samples twice."""
        now = time.monotonic()
        if vm.cpu_sample is None or now - vm.cpu_sample[0] > 600:
            vm.cpu_sample = (now, usage_ns)
            await asyncio.sleep(0.25)
            usage_ns, now = (await self.stats(vm)).cpu_usage_ns, time.monotonic()
        then, before = vm.cpu_sample
        vm.cpu_sample = (now, usage_ns)
        return max(0.0, (usage_ns - before) / 1e9 / max(now - then, 1e-3) * 100)

    async def _ready(self, vm: VMRecord) -> ExecChannel:
        """Find, create or start the container, then open its channel. Caller holds vm.lock
        (or is the adoption at start, before anyone else can use the VM)."""
        if vm.channel is not None and not vm.channel.closed:
            return vm.channel
        state = await asyncio.to_thread(docker_ops.find, self.client, vm.name)
        if state is None:
            log.info("creating VM %s", vm.name)
            state = await asyncio.to_thread(docker_ops.create, self.client, self._spec(vm.key))
        if state.status != "running":
            state = await self._start_or_recreate(vm, state)
        vm.container_id = state.id
        vm.channel = await self._open_channel(vm)
        vm.last_active = time.monotonic()
        return vm.channel

    async def _start_or_recreate(self, vm: VMRecord, state: ContainerState) -> ContainerState:
        try:
            await asyncio.to_thread(docker_ops.start, self.client, state.id)
            return state
        except VMError as exc:
            log.warning("VM %s would not start (%s): recreating it on the same volume", vm.name, exc)
            await asyncio.to_thread(docker_ops.remove, self.client, vm.name)
            created = await asyncio.to_thread(docker_ops.create, self.client, self._spec(vm.key))
            await asyncio.to_thread(docker_ops.start, self.client, created.id)
            return created

    async def _open_channel(self, vm: VMRecord) -> ExecChannel:
        async def deliver(notification: Notification) -> None:
            vm.last_active = time.monotonic()
            await self.on_notify(vm.key, notification)

        try:
            return await ExecChannel.open_docker(self.client.api, vm.container_id, on_notify=deliver)
        except VMError:
            raise
        except Exception as exc:  # docker-py and socket errors: the VM did not answer
            raise VMError(f"Could not reach the helper in VM {vm.name}: {exc}") from exc

    async def _close_channel(self, vm: VMRecord) -> None:
        if vm.channel is not None:
            channel, vm.channel = vm.channel, None
            with contextlib.suppress(Exception):
                await channel.close()

