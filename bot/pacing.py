"""A per-channel budget for messages and edits, shared by everything the bot sends.

Discord allows about 5 messages or edits per 5 s per channel and answers 429 past that. Every
send and edit into a channel goes through `slot()`, so concurrent renderers in one thread share
the budget instead of tripping it. Requests into one channel run one at a time and are stamped
when they END: whenever Discord received a request, at most `rate` fall in any window of
`per_s` seconds, whatever the latency. (discord.py would wait out a 429, but users see stalls.)
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ChannelPacer:
    def __init__(self, rate: int = 5, per_s: float = 5.0) -> None:
        self.rate = rate
        self.per_s = per_s
        self._done: dict[int, deque[float]] = defaultdict(deque)
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def free(self, channel_id: int) -> int:
        """How many sends or edits the channel could take right now."""
        done = self._done[channel_id]
        now = time.monotonic()
        return self.rate - sum(1 for t in done if t > now - self.per_s) - int(self._locks[channel_id].locked())

    @asynccontextmanager
    async def slot(self, channel_id: int) -> AsyncIterator[None]:
        """Hold this around one send or edit into the channel."""
        async with self._locks[channel_id]:  # FIFO: waiters go in the order they came
            done = self._done[channel_id]
            while True:
                now = time.monotonic()
                while done and done[0] <= now - self.per_s:
                    done.popleft()
                if len(done) < self.rate:
                    break
                await asyncio.sleep(done[0] + self.per_s - now + 0.01)
            try:
                yield
            finally:
                done.append(time.monotonic())
