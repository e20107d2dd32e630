"""bot/notify.py: the outbox worker (DM, thread fallback, retries, per-user throttle) and the VM sink.

A real Store on a temporary file, a fake Delivery, and a hand-moved clock shared by both.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.errors import DeliveryFailed, DMClosed
from bot.notify import MAX_NOTIFICATION_CHARS, NotificationWorker, bundle, queue_vm_notification
from bot.records import Conversation, OutboxItem
from bot.store import Store
from bot.vm.manager import VMKey
from bot.vm.protocol import Notification

ALICE, BOB = 7, 8
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sent:
    owner_id: int
    conversation_id: int | None
    text: str
    nonce: str


class FakeDelivery:
    """Records what was sent; `dm` is "open", "closed" (DMClosed) or "down" (DeliveryFailed)."""

    def __init__(self) -> None:
        self.dm = "open"
        self.threads = True  # False: post_in_conversation finds no place to post
        self.dms: list[Sent] = []
        self.posts: list[Sent] = []

    async def send_dm(self, owner_id: int, conversation: Conversation | None, text: str, nonce: str) -> None:
        if self.dm == "closed":
            raise DMClosed(f"User {owner_id} does not accept DMs.")
        if self.dm == "down":
            raise DeliveryFailed("Discord failed: 503 Service Unavailable")
        self.dms.append(Sent(owner_id, conversation.id if conversation else None, text, nonce))

    async def post_in_conversation(self, conversation: Conversation, text: str, nonce: str) -> bool:
        if not self.threads:
            return False
        self.posts.append(Sent(conversation.owner_id, conversation.id, text, nonce))
        return True


@dataclass
class Rig:
    store: Store
    path: Path
    clock: Clock
    delivery: FakeDelivery
    worker: NotificationWorker

    def rows(self) -> dict[int, OutboxItem]:
        """The outbox as another process would read it."""
        with sqlite3.connect(self.path) as db:
            db.row_factory = sqlite3.Row
            return {row["id"]: OutboxItem(**dict(row)) for row in db.execute("SELECT * FROM outbox")}

    async def thread(self, owner_id: int, thread_id: int) -> Conversation:
        return await self.store.get_or_create_conversation("thread", thread_id, owner_id, f"user-{owner_id}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = Clock()
    path = tmp_path / "bot.sqlite3"
    async with Store.open(path, clock=clock) as store:
        delivery = FakeDelivery()
        yield Rig(store, path, clock, delivery, NotificationWorker(store, delivery, per_minute=3, clock=clock))


async def test_a_dm_is_delivered_once_with_a_nonce_of_outbox_ids(rig: Rig) -> None:
    thread = await rig.thread(ALICE, 555)
    first = await rig.store.enqueue_notification(ALICE, thread.id, "build finished", "tool")
    second = await rig.store.enqueue_notification(ALICE, thread.id, "tests passed", "vm")
    other = await rig.store.enqueue_notification(BOB, None, "hello bob", "vm")

    assert await rig.worker.deliver_due() == 3
    by_owner = {sent.owner_id: sent for sent in rig.delivery.dms}
    assert len(rig.delivery.dms) == 2 and rig.delivery.posts == []
    assert by_owner[ALICE].nonce == f"n{first.id}-{second.id}"
    assert "build finished" in by_owner[ALICE].text and "tests passed" in by_owner[ALICE].text
    assert by_owner[ALICE].conversation_id == thread.id
    assert by_owner[BOB] == Sent(BOB, None, "hello bob", f"n{other.id}-{other.id}")

    rows = rig.rows()
    assert all(row.delivered_via == "dm" and row.delivered_at == T0 and row.attempts == 1 for row in rows.values())
    assert await rig.store.pending_count() == 0
    assert await rig.worker.deliver_due() == 0 and len(rig.delivery.dms) == 2  # never shown twice


async def test_dms_closed_posts_in_the_conversations_thread(rig: Rig) -> None:
    thread = await rig.thread(ALICE, 555)
    item = await rig.store.enqueue_notification(ALICE, thread.id, "server is up", "tool")
    rig.delivery.dm = "closed"

    assert await rig.worker.deliver_due() == 1
    assert rig.delivery.dms == []
    assert rig.delivery.posts == [Sent(ALICE, thread.id, "server is up", f"n{item.id}-{item.id}")]
    assert rig.rows()[item.id].delivered_via == "thread"


@pytest.mark.parametrize("has_conversation", [False, True])
async def test_dms_closed_and_no_thread_is_retried_later_and_not_lost(rig: Rig, has_conversation: bool) -> None:
    conversation_id = None
    if has_conversation:  # a conversation whose place is gone (a DM conversation, a deleted thread)
        conversation_id = (await rig.thread(ALICE, 556)).id
        rig.delivery.threads = False
    item = await rig.store.enqueue_notification(ALICE, conversation_id, "done", "vm")
    rig.delivery.dm = "closed"

    assert await rig.worker.deliver_due() == 0
    row = rig.rows()[item.id]
    assert row.delivered_at is None and row.attempts == 1
    assert row.next_attempt_at == T0 + 5
    assert row.last_error is not None and "does not accept DMs" in row.last_error
    assert await rig.worker.deliver_due() == 0 and rig.rows()[item.id].attempts == 1  # not due yet

    rig.clock.now = T0 + 5
    assert await rig.worker.deliver_due() == 0
    assert rig.rows()[item.id].attempts == 2 and rig.rows()[item.id].next_attempt_at == T0 + 5 + 10

    rig.delivery.dm = "open"  # the user opens their DMs
    rig.clock.now = T0 + 15
    assert await rig.worker.deliver_due() == 1
    assert [sent.text for sent in rig.delivery.dms] == ["done"]
    assert rig.rows()[item.id].delivered_via == "dm" and await rig.store.pending_count() == 0


async def test_delivery_failures_back_off_exponentially(rig: Rig) -> None:
    item = await rig.store.enqueue_notification(ALICE, None, "ping", "tool")
    rig.delivery.dm = "down"

    expected_at = T0
    for attempt, delay in enumerate([5, 10, 20, 40], start=1):
        rig.clock.now = expected_at
        assert await rig.worker.deliver_due() == 0
        row = rig.rows()[item.id]
        expected_at += delay
        assert (row.attempts, row.next_attempt_at) == (attempt, expected_at)
        assert row.last_error == "Discord failed: 503 Service Unavailable"
        rig.clock.now = expected_at - 0.5
        assert await rig.worker.deliver_due() == 0 and rig.rows()[item.id].attempts == attempt

    rig.delivery.dm = "open"
    rig.clock.now = expected_at
    assert await rig.worker.deliver_due() == 1
    assert rig.rows()[item.id].delivered_via == "dm" and rig.rows()[item.id].last_error is not None


async def test_backoff_is_capped_at_an_hour(rig: Rig) -> None:
    item = await rig.store.enqueue_notification(ALICE, None, "ping", "tool")
    rig.delivery.dm = "down"
    for _ in range(12):
        rig.clock.now = rig.rows()[item.id].next_attempt_at
        await rig.worker.deliver_due()
    row = rig.rows()[item.id]
    assert row.attempts == 12 and row.next_attempt_at - rig.clock.now == 3600


async def test_a_user_over_the_per_minute_budget_gets_one_bundled_message_later(rig: Rig) -> None:
    for i in range(3):  # per_minute=3: three separate messages in the first seconds
        rig.clock.now = T0 + i
        await rig.store.enqueue_notification(ALICE, None, f"step {i}", "vm")
        assert await rig.worker.deliver_due() == 1
    assert len(rig.delivery.dms) == 3

    rig.clock.now = T0 + 10
    waiting = [await rig.store.enqueue_notification(ALICE, None, f"spam {i}", "vm") for i in range(4)]
    bob = await rig.store.enqueue_notification(BOB, None, "for bob", "vm")
    assert await rig.worker.deliver_due() == 1  # only bob's: alice is throttled, bob is not
    assert [sent.owner_id for sent in rig.delivery.dms[3:]] == [BOB]
    rows = rig.rows()
    assert rows[bob.id].delivered_via == "dm"
    for item in waiting:  # postponed to when the oldest of the window leaves it, no attempt counted
        assert (rows[item.id].next_attempt_at, rows[item.id].attempts, rows[item.id].delivered_at) == (T0 + 60, 0, None)

    rig.clock.now = T0 + 59
    assert await rig.worker.deliver_due() == 0 and len(rig.delivery.dms) == 4
    rig.clock.now = T0 + 60
    assert await rig.worker.deliver_due() == 4
    bundled = rig.delivery.dms[4:]
    assert len(bundled) == 1, "the waiting notifications arrive as ONE message"
    assert all(f"spam {i}" in bundled[0].text for i in range(4))
    assert "4 notifications" in bundled[0].text
    assert bundled[0].nonce == f"n{waiting[0].id}-{waiting[-1].id}"
    assert await rig.store.pending_count() == 0


def test_a_bundle_too_long_keeps_the_newest_and_says_how_many() -> None:
    items = [OutboxItem(i, ALICE, None, f"{i:03d} " + "x" * 150, "vm", T0, 0, T0, None, None, None)
             for i in range(1, 41)]
    text = bundle(items)
    assert len(text) <= MAX_NOTIFICATION_CHARS
    assert "040 " in text and "001 " not in text  # the newest are kept
    assert "40 notifications" in text
    assert bundle(items[:1]) == items[0].text  # one notification is sent as it is


async def test_wake_delivers_without_waiting_for_the_poll(rig: Rig) -> None:
    rig.worker.poll_s = 60
    runner = asyncio.create_task(rig.worker.run())
    try:
        await asyncio.sleep(0.05)  # the first (empty) pass is done; the worker waits
        await rig.store.enqueue_notification(ALICE, None, "right away", "tool")
        rig.worker.wake()
        async with asyncio.timeout(5):
            while not rig.delivery.dms:
                await asyncio.sleep(0.01)
        assert rig.delivery.dms[0].text == "right away"
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_vm_notification_goes_to_the_conversation_it_names_if_it_is_the_owners(rig: Rig) -> None:
    named = await rig.thread(ALICE, 1)
    rig.clock.now = T0 + 10
    latest = await rig.thread(ALICE, 2)  # alice's last active conversation
    rig.clock.now = T0 + 20
    bobs = await rig.thread(BOB, 3)  # newer still, but bob's
    key = VMKey.for_user(ALICE)

    nids = iter(range(1, 100))  # a VM numbers its notifications

    async def queue(conversation: str | None, text: str = "note") -> OutboxItem:
        before = set(rig.rows())
        await queue_vm_notification(rig.store, key, Notification(next(nids), text, conversation, T0))
        (new,) = set(rig.rows()) - before
        return rig.rows()[new]

    item = await queue(str(named.id))
    assert (item.owner_id, item.conversation_id, item.origin, item.text) == (ALICE, named.id, "vm", "note")
    assert (await queue(str(bobs.id))).conversation_id == latest.id  # another user's: the owner's last one
    assert (await queue(None)).conversation_id == latest.id
    assert (await queue("not-a-number")).conversation_id == latest.id
    assert (await queue("999999")).conversation_id == latest.id  # no such conversation

    await rig.store.touch_conversation(named.id)  # talking in the first thread again makes it the last
    assert (await queue(None)).conversation_id == named.id

    long = await queue(str(named.id), "y" * 5000)
    assert len(long.text) == MAX_NOTIFICATION_CHARS


async def test_vm_notification_of_a_user_without_conversations_still_queues(rig: Rig) -> None:
    await queue_vm_notification(rig.store, VMKey.for_user(BOB), Notification(3, "built", None, T0))
    (item,) = rig.rows().values()
    assert (item.owner_id, item.conversation_id, item.text) == (BOB, None, "built")
    assert await rig.worker.deliver_due() == 1 and rig.delivery.dms[0].text == "built"


async def test_a_vm_notification_received_twice_is_queued_once(rig: Rig) -> None:
    await rig.thread(ALICE, 1)
    note = Notification(7, "tests passed", None, T0)
    for _ in range(2):  # the ack was lost: the VM sends it again on the next connection
        await queue_vm_notification(rig.store, VMKey.for_user(ALICE), note)
    assert [item.text for item in rig.rows().values()] == ["tests passed"]
