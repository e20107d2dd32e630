"""bot.store: schema, migrations, WAL, and every table's API against real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import ollama
import pytest

from bot.errors import StoreError
from bot.store import MEMORY_MAX_CHARS, SCHEMA_VERSION, Store

CALL = {"function": {"name": "exec", "arguments": {"cmd": "ls -la", "timeout": 5}}}


class Clock:
    """A settable clock so timestamps can be asserted exactly."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bot.sqlite3"


@pytest.fixture
async def store(db_path: Path, clock: Clock) -> AsyncIterator[Store]:
    async with Store.open(db_path, clock=clock) as opened:
        yield opened


def _tables(path: Path) -> tuple[int, set[str]]:
    with sqlite3.connect(path) as raw:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return version, names


# -- opening, migrations, restarts ------------------------------------------------------------


async def test_open_creates_parent_dir_and_schema_and_reopen_is_idempotent(db_path: Path) -> None:
    assert not db_path.parent.exists()
    async with Store.open(db_path) as store:
        conversation = await store.get_or_create_conversation("dm", "42", 7, "user-7")
    version, tables = _tables(db_path)
    assert version == SCHEMA_VERSION >= 1
    assert {"conversations", "messages", "memory", "tasks", "outbox", "links"} <= tables

    for _ in range(2):  # reopening applies nothing and loses nothing
        async with Store.open(db_path) as store:
            assert await store.get_conversation(conversation.id) == conversation
        assert _tables(db_path) == (version, tables)


async def test_wal_mode_and_foreign_keys(db_path: Path) -> None:
    async with Store.open(db_path) as store:
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(StoreError):  # foreign keys are enforced: no such conversation
            await store.append_message(999, "user", "orphan")


async def test_data_survives_a_restart(db_path: Path, clock: Clock) -> None:
    async with Store.open(db_path, clock=clock) as store:
        conv = await store.get_or_create_conversation("thread", 555, 7, "user-7", "Build it")
        await store.append_message(conv.id, "user", "hello")
        await store.append_message(conv.id, "assistant", "", tool_calls=[CALL])
        await store.set_memory(7, "likes rust")
        task = await store.create_task(7, conv.id, "build it", guild_id=9, message_ref="c/m")
        await store.enqueue_notification(7, conv.id, "done!", "vm")
        await store.create_link("hash-1", 7, "vnc", "user-7", "", expires_at=clock.now + 60)

    async with Store.open(db_path, clock=clock) as store:
        assert await store.find_conversation("thread", "555") == conv
        assert [(m.role, m.content) for m in await store.history(conv.id)] == [
            ("user", "hello"), ("assistant", "")]
        assert (await store.history(conv.id))[1].tool_calls == (CALL,)
        assert await store.get_memory(7) == "likes rust"
        assert await store.get_task(task.id) == task
        assert [n.text for n in await store.due_notifications(clock.now)] == ["done!"]
        link = await store.find_link("hash-1")
        assert link is not None and link.owner_id == 7 and link.kind == "vnc"


async def test_a_file_that_is_not_sqlite_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreError, match="Cannot open the database"):
        async with Store.open(path):
            pass


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    async with Store.open(db_path):
        pass
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        async with Store.open(db_path):
            pass


async def test_memory_database_is_allowed() -> None:
    async with Store.open(":memory:") as store:
        await store.set_memory(1, "x")
        assert await store.get_memory(1) == "x"


# -- conversations ----------------------------------------------------------------------------


async def test_get_or_create_conversation_is_idempotent_and_keeps_the_owner(store: Store) -> None:
    first = await store.get_or_create_conversation("thread", 100, 7, "user-7", "t")
    again = await store.get_or_create_conversation("thread", "100", 8, "user-8", "other")
    assert again == first and again.owner_id == 7  # the caller checks the owner
    dm = await store.get_or_create_conversation("dm", 100, 7, "user-7")  # same id, other kind
    assert dm.id != first.id
    assert await store.find_conversation("console", "100") is None
    assert await store.get_conversation(12345) is None


async def test_touch_and_last_active_conversation(store: Store, clock: Clock) -> None:
    assert await store.last_active_conversation(7) is None
    a = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    clock.now += 10
    b = await store.get_or_create_conversation("dm", 2, 7, "user-7")
    await store.get_or_create_conversation("thread", 3, 8, "user-8")
    assert (await store.last_active_conversation(7)) == b
    clock.now += 10
    await store.touch_conversation(a.id)
    latest = await store.last_active_conversation(7)
    assert latest is not None and latest.id == a.id and latest.last_active_at == clock.now
    only_dm = await store.last_active_conversation(7, kind="dm")
    assert only_dm is not None and only_dm.id == b.id


# -- messages ---------------------------------------------------------------------------------


async def test_history_is_in_order_and_limit_keeps_the_newest(store: Store) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    for i in range(10):
        await store.append_message(conv.id, "user" if i % 2 == 0 else "assistant", f"m{i}")
    assert [m.content for m in await store.history(conv.id)] == [f"m{i}" for i in range(10)]
    assert [m.content for m in await store.history(conv.id, limit=3)] == ["m7", "m8", "m9"]
    other = await store.get_or_create_conversation("thread", 2, 7, "user-7")
    assert await store.history(other.id) == []


async def test_round_trip_to_ollama_message_with_tool_calls_and_tool_name(store: Store) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    call = ollama.Message.ToolCall(function=ollama.Message.ToolCall.Function(
        name="write_file", arguments={"path": "/workspace/a.py", "content": "print('é')\n"}))
    originals = [
        ollama.Message(role="system", content="You are helpful."),
        ollama.Message(role="user", content="write a file"),
        ollama.Message(role="assistant", content="", thinking="I should write it", tool_calls=[call]),
        ollama.Message(role="tool", content="wrote 11 bytes", tool_name="write_file"),
    ]
    stored = await store.append_messages(conv.id, originals)
    single = await store.append_message(conv.id, "assistant", None, tool_calls=[CALL], tokens=12)
    history = await store.history(conv.id)
    assert history == [*stored, single]  # what append returns is what history reads back

    back = [m.to_ollama() for m in history]
    assert all(isinstance(m, ollama.Message) for m in back)
    assert [m.model_dump() for m in back[:4]] == [m.model_dump() for m in originals]
    assert isinstance(back[2].tool_calls[0], ollama.Message.ToolCall)
    assert back[2].tool_calls[0].function.arguments["content"] == "print('é')\n"
    assert back[3].tool_name == "write_file" and back[3].tool_calls is None
    assert back[4].tool_calls[0].function.name == "exec" and history[4].tokens == 12
    assert back[4].content == ""  # None content is stored as an empty string


async def test_append_messages_is_all_or_nothing(store: Store) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    with pytest.raises(StoreError):
        await store.append_messages(conv.id, [{"role": "user", "content": "ok"},
                                              {"role": "robot", "content": "bad role"}])
    assert await store.history(conv.id) == []
    await store.append_message(conv.id, "user", "still usable")  # no transaction left open
    assert len(await store.history(conv.id)) == 1


async def test_concurrent_appends_from_many_tasks_all_land(store: Store) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")

    async def writer(n: int) -> None:
        for i in range(50):
            await store.append_message(conv.id, "user", f"w{n}-{i}")

    async def batcher(n: int) -> None:
        await store.append_messages(conv.id, [{"role": "tool", "content": f"b{n}-{i}"}
                                              for i in range(20)])

    await asyncio.gather(*(writer(n) for n in range(8)), *(batcher(n) for n in range(4)))
    contents = [m.content for m in await store.history(conv.id)]
    assert len(contents) == 8 * 50 + 4 * 20 == len(set(contents))
    for n in range(8):  # each writer's messages keep their order
        mine = [c for c in contents if c.startswith(f"w{n}-")]
        assert mine == [f"w{n}-{i}" for i in range(50)]
    for n in range(4):  # a batch is one transaction: contiguous, nothing interleaved
        start = contents.index(f"b{n}-0")
        assert contents[start:start + 20] == [f"b{n}-{i}" for i in range(20)]


async def test_a_cancelled_batch_leaves_the_store_usable(store: Store) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    for point in range(12):  # cancel at the lock, at BEGIN, amid the inserts, at COMMIT...
        batch = asyncio.create_task(store.append_messages(
            conv.id, [{"role": "user", "content": f"c{point}-{i}"} for i in range(5)]))
        for _ in range(point):
            await asyncio.sleep(0)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        await store.append_message(conv.id, "user", f"after{point}")  # no transaction left open
        contents = [m.content for m in await store.history(conv.id)]
        assert contents[-1] == f"after{point}"
        assert len([c for c in contents if c.startswith(f"c{point}-")]) in (0, 5)  # all or none


# -- memory -----------------------------------------------------------------------------------


async def test_memory_is_per_user_replaced_and_bounded(store: Store, clock: Clock) -> None:
    assert await store.get_memory(7) == ""
    await store.set_memory(7, "uses vim")
    await store.set_memory(8, "uses emacs")
    await store.set_memory(7, "uses neovim")
    assert (await store.get_memory(7), await store.get_memory(8)) == ("uses neovim", "uses emacs")

    await store.set_memory(7, "x" * MEMORY_MAX_CHARS)  # exactly the limit is fine
    with pytest.raises(StoreError, match=str(MEMORY_MAX_CHARS)):
        await store.set_memory(7, "y" * (MEMORY_MAX_CHARS + 1))
    assert await store.get_memory(7) == "x" * MEMORY_MAX_CHARS  # refused, not truncated


# -- tasks ------------------------------------------------------------------------------------


async def test_task_lifecycle_sets_timestamps(store: Store, clock: Clock) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    task = await store.create_task(7, conv.id, "make a website", guild_id=99)
    assert (task.status, task.created_at, task.started_at, task.finished_at) == (
        "queued", 1000.0, None, None)
    assert (task.steps, task.tokens, task.error, task.guild_id, task.message_ref) == (0, 0, None, 99, None)

    clock.now = 1005.0
    running = await store.set_task_status(task.id, "running")
    assert (running.status, running.started_at, running.finished_at) == ("running", 1005.0, None)
    clock.now = 1006.0
    await store.set_task_status(task.id, "running", steps=3)  # started_at is stamped once
    await store.set_task_message_ref(task.id, "123/456")

    clock.now = 1030.0
    done = await store.set_task_status(task.id, "done", tokens=1500)
    assert (done.status, done.started_at, done.finished_at) == ("done", 1005.0, 1030.0)
    assert (done.steps, done.tokens, done.message_ref) == (3, 1500, "123/456")
    assert await store.get_task(task.id) == done

    failed = await store.create_task(7, conv.id, "other")
    failed = await store.set_task_status(failed.id, "failed", error="model vanished")
    assert failed.error == "model vanished" and failed.finished_at == 1030.0
    assert failed.started_at is None
    assert failed.id > task.id  # ids are the user-visible task numbers


async def test_task_errors(store: Store) -> None:
    assert await store.get_task(404) is None
    with pytest.raises(StoreError, match="#404"):
        await store.set_task_status(404, "running")
    task = await store.create_task(7, None, "p")
    with pytest.raises(StoreError):
        await store.set_task_status(task.id, "exploded")  # type: ignore[arg-type]
    assert (await store.get_task(task.id)).status == "queued"  # type: ignore[union-attr]


async def test_list_tasks_per_owner_and_for_admins(store: Store) -> None:
    conv_a = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    conv_b = await store.get_or_create_conversation("thread", 2, 8, "user-8")
    ids = []
    for i in range(6):
        owner, conv = (7, conv_a) if i % 2 == 0 else (8, conv_b)
        ids.append((await store.create_task(owner, conv.id, f"p{i}")).id)

    assert [t.id for t in await store.list_tasks(7)] == [ids[4], ids[2], ids[0]]
    assert [t.id for t in await store.list_tasks(8, limit=2)] == [ids[5], ids[3]]
    assert [t.id for t in await store.list_tasks()] == ids[::-1]
    assert await store.list_tasks(9) == []
    assert [t.prompt for t in await store.tasks_of_conversation(conv_b.id)] == ["p1", "p3", "p5"]


async def test_mark_interrupted_after_a_restart(db_path: Path, clock: Clock) -> None:
    async with Store.open(db_path, clock=clock) as store:
        queued = await store.create_task(7, None, "queued")
        running = await store.create_task(7, None, "running")
        await store.set_task_status(running.id, "running")
        done = await store.create_task(7, None, "done")
        await store.set_task_status(done.id, "done")
        cancelled = await store.create_task(8, None, "cancelled")
        await store.set_task_status(cancelled.id, "cancelled")

    clock.now = 2000.0
    async with Store.open(db_path, clock=clock) as store:  # the bot starts again
        assert await store.mark_interrupted() == 2
        statuses = {t.prompt: t for t in await store.list_tasks()}
        assert {p: t.status for p, t in statuses.items()} == {
            "queued": "interrupted", "running": "interrupted", "done": "done", "cancelled": "cancelled"}
        assert statuses["running"].finished_at == 2000.0 and statuses["running"].error
        assert statuses["done"].finished_at == 1000.0
        assert await store.mark_interrupted() == 0
        assert queued.id and running.id


# -- outbox -----------------------------------------------------------------------------------


async def test_outbox_due_attempts_and_delivery(store: Store, clock: Clock) -> None:
    conv = await store.get_or_create_conversation("thread", 1, 7, "user-7")
    first = await store.enqueue_notification(7, conv.id, "build finished", "vm")
    clock.now += 1
    second = await store.enqueue_notification(8, None, "tests pass", "tool")
    assert (first.attempts, first.next_attempt_at, first.delivered_at) == (0, 1000.0, None)
    assert await store.pending_count() == 2
    assert [n.id for n in await store.due_notifications(clock.now, 10)] == [first.id, second.id]
    assert [n.id for n in await store.due_notifications(clock.now, 1)] == [first.id]
    assert await store.due_notifications(999.0, 10) == []  # nothing due before it was stored

    await store.mark_attempt_failed(first.id, "DMs closed", next_attempt_at=clock.now + 30)
    assert [n.id for n in await store.due_notifications(clock.now, 10)] == [second.id]
    retry = (await store.due_notifications(clock.now + 30, 10))[1]
    assert (retry.id, retry.attempts, retry.last_error) == (first.id, 1, "DMs closed")

    await store.mark_delivered(first.id, "thread")
    await store.mark_delivered(second.id, "dm")
    assert await store.due_notifications(clock.now + 3600, 10) == []
    assert await store.pending_count() == 0
    third = await store.enqueue_notification(7, None, "console user", "tool")
    await store.mark_delivered(third.id, "console")  # the terminal front end delivers too
    assert await store.due_notifications() == [] and await store.pending_count() == 0


async def test_count_recent_notifications_for_the_rate_limit(store: Store, clock: Clock) -> None:
    for _ in range(3):
        await store.enqueue_notification(7, None, "spam", "vm")
        clock.now += 10
    await store.enqueue_notification(8, None, "other user", "vm")
    assert await store.count_recent_notifications(7, since=0) == 3
    assert await store.count_recent_notifications(7, since=1010.0) == 2
    assert await store.count_recent_notifications(7, since=clock.now) == 0
    assert await store.count_recent_notifications(8, since=0) == 1


# -- links ------------------------------------------------------------------------------------


async def test_links_find_revoke_and_expire(store: Store, clock: Clock) -> None:
    vnc = await store.create_link("h-vnc", 7, "vnc", "user-7", "", expires_at=1600.0)
    dl = await store.create_link("h-dl", 7, "download", "user-7", "/workspace/out.zip", 1100.0)
    other = await store.create_link("h-other", 8, "vnc", "user-8", "", 1600.0)
    assert await store.find_link("h-vnc") == vnc and vnc.is_live(clock.now)
    assert await store.find_link("h-dl") == dl and dl.target == "/workspace/out.zip"
    assert await store.find_link("unknown") is None
    assert await store.find_link("h-dl", now=1100.0) is None  # expired exactly at expires_at
    with pytest.raises(StoreError):  # token hashes are unique
        await store.create_link("h-vnc", 8, "vnc", "user-8", "", 1600.0)

    assert await store.revoke_link(vnc.id) is True
    assert await store.revoke_link(vnc.id) is False
    assert await store.find_link("h-vnc") is None
    assert await store.revoke_links(7, kind="vnc") == 0  # already revoked
    assert await store.revoke_links(7) == 1  # the download link
    assert await store.find_link("h-dl") is None
    assert await store.find_link("h-other") == other  # another user's link is untouched

    clock.now = 1700.0
    assert await store.find_link("h-other") is None
    assert await store.delete_expired_links() == 3
    assert await store.delete_expired_links() == 0


async def test_a_vm_notification_sent_again_is_stored_once(store: Store) -> None:
    first = await store.enqueue_notification(7, None, "built", "vm", source_key="user-7:3:1700000000.5")
    again = await store.enqueue_notification(7, None, "built", "vm", source_key="user-7:3:1700000000.5")
    other = await store.enqueue_notification(7, None, "built", "vm", source_key="user-7:3:1700000999.0")
    assert first is not None and again is None and other is not None
    assert [item.source_key for item in await store.due_notifications(now=2e9)] == [
        "user-7:3:1700000000.5", "user-7:3:1700000999.0"]
