"""The idle reaper: stops VMs nobody uses, so idle users cost no memory.

A VM is idle when no turn runs in it, no user process runs besides the helper and the desktop
(a background `make && notify done` counts as work), and no desktop session (tunnel) is open.
After `VM_IDLE_TIMEOUT` seconds of that it is stopped; the next `channel()` starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from bot.errors import BotError

if TYPE_CHECKING:
    from bot.vm.manager import VMKey, VMManager

log = logging.getLogger(__name__)


async def reap_once(manager: VMManager, now: float | None = None) -> list[VMKey]:
    """Check every attached VM once; stop the ones idle for longer than the timeout."""
    now = time.monotonic() if now is None else now
    timeout = manager.settings.vm_idle_timeout
    stopped: list[VMKey] = []
    for vm in manager.records():
        channel = vm.channel
        if channel is None or channel.closed:
            continue  # not running, or not ours to judge until it is used again
        if vm.busy:
            vm.last_active = now
            continue
        try:
            stats = await manager.stats(vm)
        except BotError as exc:
            log.debug("reaper: no stats from %s: %s", vm.name, exc)
            continue
        if stats.user_processes or stats.tunnels_open or stats.jobs_running:
            vm.last_active = now
            continue
        if now - vm.last_active >= timeout:
            log.info("stopping idle VM %s (idle for %.0f s)", vm.name, now - vm.last_active)
            if await manager.stop(vm.key, only_if_idle=True):
                stopped.append(vm.key)
    return stopped


async def run_reaper(manager: VMManager) -> None:
    """Run `reap_once` forever, a few times per timeout period."""
    interval = min(60.0, max(1.0, manager.settings.vm_idle_timeout / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            await reap_once(manager)
        except BotError as exc:
            log.warning("reaper pass failed: %s", exc)
