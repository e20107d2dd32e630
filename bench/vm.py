"""VM benchmarks: exec round trips through the channel vs raw docker exec, VM start times.

    python bench/vm.py [--runs 200]

Prints a table, then as its LAST line one JSON object: exec_p50_ms, exec_p95_ms, raw_exec_p50_ms
(docker-py exec_run, measured in the same run: the baseline), cold_ready_s (new VM -> first exec),
resume_s (stopped VM -> first exec), desktop_ready_s (new VM -> RFB greeting through the tunnel).
Needs the engine and the agent image (scripts/test.sh provides both).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import print_figures  # noqa: E402 (bench/report.py: the table, then the figures as one json line)

from bot.config import load_settings  # noqa: E402
from bot.errors import BotError  # noqa: E402
from bot.vm.docker_ops import remove_app  # noqa: E402
from bot.vm.manager import VMKey, VMManager  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def rfb_greeting(manager: VMManager, key: VMKey) -> None:
    channel = await manager.channel(key)
    while True:
        try:
            tunnel = await channel.open_tunnel(5900)
            if (await asyncio.wait_for(tunnel.read(), 5)).startswith(b"RFB"):
                await tunnel.close()
                return
            await tunnel.close()
        except BotError:
            await asyncio.sleep(0.02)


async def bench(runs: int) -> dict[str, float]:
    client = docker.from_env()
    app = f"bench{uuid.uuid4().hex[:6]}"

    async def ignore(key: VMKey, notification: Any) -> None:
        pass

    settings = load_settings(_env_file=None, app_name=app, vm_desktop=False, vm_idle_timeout=0)
    desktop_settings = load_settings(_env_file=None, app_name=app, vm_desktop=True, vm_idle_timeout=0)
    try:
        async with VMManager(settings, client, on_notify=ignore) as manager:
            warm = VMKey.for_user(1)
            channel = await manager.channel(warm)
            for _ in range(10):
                await channel.run("true")
            exec_ms = [1000 * await timed(lambda: channel.run("true")) for _ in range(runs)]
            container = client.containers.get(manager.container_name(warm))
            raw_ms = [1000 * await timed(lambda: asyncio.to_thread(container.exec_run, ["true"], user="agent"))
                      for _ in range(max(20, runs // 4))]
            cold = [await timed(lambda i=i: manager.channel(VMKey.for_user(100 + i)))
                    for i in range(5)]
            resume = []
            for _ in range(5):
                await manager.stop(warm)
                resume.append(await timed(lambda: manager.channel(warm)))
        async with VMManager(desktop_settings, client, on_notify=ignore) as manager:
            desktop = [await timed(lambda i=i: rfb_greeting(manager, VMKey.for_user(200 + i))) for i in range(3)]
    finally:
        await asyncio.to_thread(remove_app, client, app)
    return {
        "exec_p50_ms": round(statistics.median(exec_ms), 2), "exec_p95_ms": round(pct(exec_ms, 0.95), 2),
        "raw_exec_p50_ms": round(statistics.median(raw_ms), 2),
        "cold_ready_s": round(statistics.median(cold), 3), "resume_s": round(statistics.median(resume), 3),
        "desktop_ready_s": round(statistics.median(desktop), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    figures = asyncio.run(bench(parser.parse_args().runs))
    figures["exec_vs_raw_ratio"] = round(figures["exec_p50_ms"] / figures["raw_exec_p50_ms"], 3)
    print_figures(figures, {"exec_p50_ms": "<= 20 ms", "raw_exec_p50_ms": "(baseline, same run)",
                            "exec_vs_raw_ratio": "(lower is better)", "cold_ready_s": "<= 0.6 s",
                            "resume_s": "<= 0.5 s", "desktop_ready_s": "<= 1.2 s"})


if __name__ == "__main__":
    main()
