"""Notifications: stored first (the outbox), delivered later by a front end's worker.

Both the agent's `notify` tool and the in-VM `notify` command end up in the outbox. A VM
notification names its conversation through the AGENT_CONVERSATION variable of the exec that
started it; a conversation of another user, or none, falls back to the owner's last active one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol

from bot.errors import BotError, DeliveryFailed, DMClosed
from bot.records import Conversation, DeliveredVia, OutboxItem
from bot.store import Store
from bot.vm.channel import Notification
from bot.vm.manager import VMKey

log = logging.getLogger(__name__)

MAX_NOTIFICATION_CHARS = 1900


async def queue_vm_notification(store: Store, key: VMKey, notification: Notification) -> None:
    """The VMManager's on_notify sink: put a VM's notification in the outbox (before the VM's ack)."""
    conversation = None
    if notification.conversation and str(notification.conversation).isdigit():
        conversation = await store.get_conversation(int(notification.conversation))
        if conversation is not None and conversation.owner_id != key.owner_id:
            log.warning("VM %s named conversation %s of another user: ignored", key.scope, conversation.id)
            conversation = None
    if conversation is None:
        conversation = await store.last_active_conversation(key.owner_id)
    await store.enqueue_notification(key.owner_id, conversation.id if conversation else None,
                                     notification.text[:MAX_NOTIFICATION_CHARS], "vm",
                                     source_key=f"{key.scope}:{notification.nid}:{notification.ts}")


class Delivery(Protocol):
    """How a front end delivers: implemented with Discord in bot/client.py."""

    async def send_dm(self, owner_id: int, conversation: Conversation | None, text: str, nonce: str) -> None:
        """DM the user; raise DMClosed when they refuse DMs, DeliveryFailed to retry later."""

    async def post_in_conversation(self, conversation: Conversation, text: str, nonce: str) -> bool:
        """Post where the conversation lives (its thread); False when it has no such place."""


class NotificationWorker:
    """Delivers the outbox: DM first, the conversation's thread when DMs are closed, retries with
    backoff, at most `per_minute` messages a user (more are bundled into the next one), and each
    message carries a nonce made of outbox ids, so a retry after a crash is not shown twice."""

    def __init__(self, store: Store, delivery: Delivery, *, per_minute: int = 5, poll_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.delivery = delivery
        self.per_minute = per_minute
        self.poll_s = poll_s
        self.clock = clock
        self._sent: dict[int, deque[float]] = defaultdict(deque)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: deliver now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except BotError as exc:
                log.warning("notification pass failed: %s", exc)
            except Exception:  # the worker must outlive any one failure: nothing else delivers
                log.exception("notification pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def deliver_due(self) -> int:
        """One pass over the due items; returns how many were delivered."""
        by_owner: dict[int, list[OutboxItem]] = defaultdict(list)
        for item in await self.store.due_notifications(self.clock(), limit=200):
            by_owner[item.owner_id].append(item)
        delivered = 0
        for owner_id, items in by_owner.items():
            delivered += await self._deliver_owner(owner_id, items)
        return delivered

    async def _deliver_owner(self, owner_id: int, items: list[OutboxItem]) -> int:
        now = self.clock()
        window = self._sent[owner_id]
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= self.per_minute:  # throttled: bundle them into one message later
            for item in items:
                await self.store.reschedule_notification(item.id, window[0] + 60)
            log.info("throttling notifications of user %s (%d waiting)", owner_id, len(items))
            return 0
        conversation = await self._conversation(items[-1])
        text, nonce = bundle(items), f"n{items[0].id}-{items[-1].id}"
        try:
            via = await self._send(owner_id, conversation, text, nonce)
        except BotError as exc:
            for item in items:
                delay = min(3600.0, 5 * 2 ** item.attempts)
                await self.store.mark_attempt_failed(item.id, exc.message, now + delay)
            log.warning("notification for user %s failed (%s); retrying", owner_id, exc)
            return 0
        window.append(now)
        for item in items:
            await self.store.mark_delivered(item.id, via)
        return len(items)

    async def _conversation(self, item: OutboxItem) -> Conversation | None:
        return await self.store.get_conversation(item.conversation_id) if item.conversation_id else None

    async def _send(self, owner_id: int, conversation: Conversation | None, text: str,
                    nonce: str) -> DeliveredVia:
        try:
            await self.delivery.send_dm(owner_id, conversation, text, nonce)
            return "dm"
        except DMClosed:
            if conversation is None or not await self.delivery.post_in_conversation(conversation, text, nonce):
                raise DeliveryFailed(f"User {owner_id} does not accept DMs and the notification has no "
                                     "thread to go to.") from None
            return "thread"


def bundle(items: list[OutboxItem]) -> str:
    """One notification, or several in one message (newest kept when they do not fit)."""
    if len(items) == 1:
        return items[0].text
    lines = [f"• {item.text}" for item in items]
    text = f"{len(items)} notifications:\n" + "\n".join(lines)
    while len(text) > MAX_NOTIFICATION_CHARS and len(lines) > 1:
        lines.pop(0)
        text = f"{len(items)} notifications (+{len(items) - len(lines)} earlier):\n" + "\n".join(lines)
    return text[:MAX_NOTIFICATION_CHARS]
