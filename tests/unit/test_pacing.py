"""bot/pacing.py: ChannelPacer keeps every channel within `rate` requests per `per_s` seconds.

Real time with a short window; the assertions are on recorded timestamps and orders.
"""

from __future__ import annotations

import asyncio
import time

from bot.pacing import ChannelPacer

RATE, PER_S = 5, 0.4


def max_in_window(stamps: list[float], per_s: float) -> int:
    """The largest number of stamps falling in any half-open window [t, t + per_s)."""
    stamps = sorted(stamps)
    return max((sum(1 for s in stamps if t <= s < t + per_s) for t in stamps), default=0)


async def send(pacer: ChannelPacer, channel: int, log: list[tuple[int, int, float]], index: int,
               latency: float = 0.0) -> None:
    async with pacer.slot(channel):
        await asyncio.sleep(latency)  # the request in flight
        log.append((channel, index, time.monotonic()))  # it ends: Discord has received it


async def test_no_window_holds_more_than_rate_completions() -> None:
    pacer = ChannelPacer(rate=RATE, per_s=PER_S)
    log: list[tuple[int, int, float]] = []
    await asyncio.gather(*(send(pacer, 1, log, i, latency=0.01 * (i % 3)) for i in range(17)))

    stamps = [t for _, _, t in log]
    assert len(stamps) == 17
    assert max_in_window(stamps, PER_S) == RATE  # never more, and the budget is used, not wasted
    # 17 requests need at least three full windows of waiting.
    assert stamps[-1] - stamps[0] >= 3 * PER_S


async def test_requests_in_one_channel_run_one_at_a_time_in_arrival_order() -> None:
    pacer = ChannelPacer(rate=RATE, per_s=PER_S)
    inside: list[int] = []
    overlaps: list[int] = []
    order: list[int] = []

    async def request(index: int) -> None:
        async with pacer.slot(7):
            if inside:
                overlaps.append(index)
            inside.append(index)
            order.append(index)
            await asyncio.sleep(0.005)
            inside.remove(index)

    tasks = []
    for i in range(12):
        tasks.append(asyncio.create_task(request(i)))
        await asyncio.sleep(0)  # each request arrives after the one before
    await asyncio.gather(*tasks)
    assert order == list(range(12))
    assert overlaps == []


async def test_separate_channels_do_not_wait_for_each_other() -> None:
    pacer = ChannelPacer(rate=RATE, per_s=PER_S)
    log: list[tuple[int, int, float]] = []
    busy = [send(pacer, 1, log, i) for i in range(3 * RATE)]  # channel 1 must wait two windows
    other = [send(pacer, 2, log, i) for i in range(RATE)]    # channel 2 fits in its own budget
    await asyncio.gather(*busy, *other)

    first = sorted(t for channel, _, t in log if channel == 1)
    second = sorted(t for channel, _, t in log if channel == 2)
    assert max_in_window(first, PER_S) <= RATE and max_in_window(second, PER_S) <= RATE
    # All of channel 2 is through before channel 1 gets past its first window.
    assert second[-1] < first[RATE]
    assert first[RATE] - first[0] >= PER_S


async def test_a_slow_request_counts_when_it_ends() -> None:
    """Stamped at the end: a request that took long still occupies the window after it finished."""
    pacer = ChannelPacer(rate=2, per_s=PER_S)
    log: list[tuple[int, int, float]] = []
    await send(pacer, 3, log, 0, latency=PER_S * 1.5)  # ends well after it started
    await send(pacer, 3, log, 1)
    await send(pacer, 3, log, 2)  # a third in the window of the first's END must wait
    stamps = [t for _, _, t in log]
    assert stamps[2] - stamps[0] >= PER_S


async def test_free_counts_what_the_channel_can_take_now() -> None:
    pacer = ChannelPacer(rate=RATE, per_s=PER_S)
    assert pacer.free(1) == RATE

    entered, release = asyncio.Event(), asyncio.Event()

    async def held() -> None:
        async with pacer.slot(1):
            entered.set()
            await release.wait()

    task = asyncio.create_task(held())
    await entered.wait()
    assert pacer.free(1) == RATE - 1  # a request in flight takes a place
    release.set()
    await task
    assert pacer.free(1) == RATE - 1  # it ended: counted in the window

    for _ in range(RATE - 1):
        async with pacer.slot(1):
            pass
    assert pacer.free(1) == 0
    assert pacer.free(2) == RATE  # other channels are untouched

    await asyncio.sleep(PER_S + 0.05)
    assert pacer.free(1) == RATE  # the window moved past them
