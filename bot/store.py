"""SQLite persistence (aiosqlite): the only module that speaks SQL.

One connection per process, WAL journal, `synchronous=NORMAL`, foreign keys on, a busy timeout.
The connection runs in autocommit mode: a single write is its own committed transaction, and
multi-statement writes run between an explicit BEGIN/COMMIT. An `asyncio.Lock` serialises every
statement so that coroutines sharing the connection never interleave inside a transaction.

Schema versions live in `PRAGMA user_version`; `_MIGRATIONS` is an ordered list whose N-th entry
moves the schema from version N to N+1. Pending migrations are applied in one transaction at open,
so reopening a database is a no-op.

Times are UTC epoch seconds (float) throughout; every sqlite failure crossing the API becomes
`bot.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import ollama

from bot.errors import StoreError
from bot.records import (TERMINAL_STATUSES, Conversation, ConversationKind, DeliveredVia, Link, LinkKind, Origin,
                         OutboxItem, Role, StoredMessage, Task, TaskStatus, link_from_row, message_from_row,
                         tool_calls_json)

log = logging.getLogger(__name__)

MEMORY_MAX_CHARS = 4000
BUSY_TIMEOUT_MS = 5000

# A message to append: an ollama.Message, or a mapping with the same keys plus optional "tokens".
MessageInput = ollama.Message | Mapping[str, Any]

_MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('thread', 'dm', 'console')),
            external_id TEXT NOT NULL, owner_id INTEGER NOT NULL, vm_key TEXT NOT NULL,
            title TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, last_active_at REAL NOT NULL,
            UNIQUE (kind, external_id))""",
        "CREATE INDEX conversations_owner ON conversations (owner_id, last_active_at)",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
            content TEXT NOT NULL, thinking TEXT, tool_calls TEXT, tool_name TEXT, tokens INTEGER,
            created_at REAL NOT NULL)""",
        "CREATE INDEX messages_conversation ON messages (conversation_id, id)",
        """CREATE TABLE memory (
            owner_id INTEGER PRIMARY KEY, text TEXT NOT NULL, updated_at REAL NOT NULL)""",
        """CREATE TABLE tasks (
            id INTEGER PRIMARY KEY AUTOINCREMENT, owner_id INTEGER NOT NULL,
            conversation_id INTEGER REFERENCES conversations (id) ON DELETE SET NULL,
            prompt TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
            steps INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
            guild_id INTEGER, message_ref TEXT)""",
        "CREATE INDEX tasks_owner ON tasks (owner_id, id)",
        "CREATE INDEX tasks_conversation ON tasks (conversation_id, id)",
        "CREATE INDEX tasks_status ON tasks (status)",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY, owner_id INTEGER NOT NULL,
            conversation_id INTEGER REFERENCES conversations (id) ON DELETE SET NULL,
            text TEXT NOT NULL, origin TEXT NOT NULL CHECK (origin IN ('tool', 'vm')),
            created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL, delivered_at REAL,
            delivered_via TEXT CHECK (delivered_via IN ('dm', 'thread', 'console')), last_error TEXT)""",
        "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL",
        "CREATE INDEX outbox_owner ON outbox (owner_id, created_at)",
        """CREATE TABLE links (
            id INTEGER PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, owner_id INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('vnc', 'download')), vm_key TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, expires_at REAL NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX links_owner ON links (owner_id, kind)",
    ),
    (  # 2: a VM's notification is stored once even when the VM sends it again (a lost ack)
        "ALTER TABLE outbox ADD COLUMN source_key TEXT",
        "CREATE UNIQUE INDEX outbox_source ON outbox (source_key) WHERE source_key IS NOT NULL",
    ),
]
SCHEMA_VERSION = len(_MIGRATIONS)


R = TypeVar("R")


@contextmanager
def _translated(what: str = "The bot's database failed") -> Iterator[None]:
    """sqlite errors leave the store as StoreError."""
    try:
        yield
    except sqlite3.Error as exc:
        log.warning("store: %s: %s", what, exc)
        raise StoreError(f"{what}: {exc}") from exc


_INSERT_MESSAGE = ("INSERT INTO messages (conversation_id, role, content, thinking, tool_calls, tool_name,"
                   " tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_MESSAGE_COLUMNS = ("conversation_id", "role", "content", "thinking", "tool_calls", "tool_name",
                    "tokens", "created_at")


class Store:
    """All persistent state. Open with `async with Store.open(path) as store:`."""

    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._lock = asyncio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str | Path, *, clock: Callable[[], float] = time.time
                   ) -> AsyncIterator[Store]:
        """Open (creating the parent directory and the schema); close on exit."""
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"Cannot open the database {path}: {exc}") from exc
        db.row_factory = sqlite3.Row
        try:
            store = cls(db, clock)
            with _translated(f"Cannot open the database {path}"):
                await store._setup(path)
            yield store
        finally:
            await db.close()

    async def _setup(self, path: str | Path) -> None:
        for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "journal_mode = WAL",
                       "synchronous = NORMAL", "foreign_keys = ON"):
            await self._db.execute(f"PRAGMA {pragma}")
        async with self._transaction("BEGIN IMMEDIATE") as db:
            (version,) = list(await db.execute_fetchall("PRAGMA user_version"))[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"The database {path} has schema version {version}, newer than"
                                 f" this bot's ({SCHEMA_VERSION}): run a newer bot.")
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number]:
                    await db.execute(statement)
                log.info("store: migrated the schema to version %d", number + 1)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- low-level helpers: every statement runs under the lock --------------------------------

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Cursor:
        with _translated():
            async with self._lock:
                return await self._db.execute(sql, params)

    async def _all(self, make: Callable[[Mapping[str, Any]], R], sql: str,
                   params: Sequence[Any] = ()) -> list[R]:
        with _translated():
            async with self._lock:
                rows = await self._db.execute_fetchall(sql, params)
        return [make(dict(row)) for row in rows]

    async def _one(self, make: Callable[[Mapping[str, Any]], R], sql: str,
                   params: Sequence[Any] = ()) -> R | None:
        rows = await self._all(make, sql, params)
        return rows[0] if rows else None

    async def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._one(lambda row: int(next(iter(row.values()))), sql, params) or 0

    @asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN") -> AsyncIterator[aiosqlite.Connection]:
        """Statements run in the body commit together; any exception rolls them back."""
        with _translated():
            async with self._lock:
                try:  # BEGIN inside: a cancelled await still runs its queued statement
                    await self._db.execute(begin)
                    yield self._db
                    await self._db.execute("COMMIT")
                except BaseException:
                    try:
                        await self._db.execute("ROLLBACK")
                    except sqlite3.Error:  # none open: a cancelled COMMIT completed, or BEGIN failed
                        log.debug("store: no transaction left to roll back")
                    raise

    # -- conversations -------------------------------------------------------------------------

    async def get_or_create_conversation(self, kind: ConversationKind, external_id: str | int,
                                         owner_id: int, vm_key: str, title: str = "") -> Conversation:
        """The conversation (kind, external_id), created with these fields if new. An existing
        one is returned as is (the caller checks `owner_id`)."""
        now = self._clock()
        await self._run(
            "INSERT INTO conversations (kind, external_id, owner_id, vm_key, title, created_at,"
            " last_active_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, external_id) DO NOTHING",
            (kind, str(external_id), owner_id, vm_key, title, now, now))
        conversation = await self.find_conversation(kind, external_id)
        assert conversation is not None
        return conversation

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        return await self._one(lambda r: Conversation(**r), "SELECT * FROM conversations WHERE id = ?",
                               (conversation_id,))

    async def find_conversation(self, kind: ConversationKind, external_id: str | int
                                ) -> Conversation | None:
        return await self._one(lambda r: Conversation(**r), "SELECT * FROM conversations"
                               " WHERE kind = ? AND external_id = ?", (kind, str(external_id)))

    async def touch_conversation(self, conversation_id: int) -> None:
        await self._run("UPDATE conversations SET last_active_at = ? WHERE id = ?",
                        (self._clock(), conversation_id))

    async def last_active_conversation(self, owner_id: int, kind: ConversationKind | None = None
                                       ) -> Conversation | None:
        return await self._one(
            lambda r: Conversation(**r), "SELECT * FROM conversations WHERE owner_id = ?"
            " AND (? IS NULL OR kind = ?) ORDER BY last_active_at DESC, id DESC LIMIT 1",
            (owner_id, kind, kind))

    # -- messages ------------------------------------------------------------------------------

    async def append_message(self, conversation_id: int, role: Role, content: str | None, *,
                             thinking: str | None = None, tool_calls: Sequence[Any] | None = None,
                             tool_name: str | None = None, tokens: int | None = None) -> StoredMessage:
        """Append one message as its own committed transaction. `tool_calls` takes
        ollama.Message.ToolCall objects or {"function": {"name", "arguments"}} mappings;
        content None is stored as ""."""
        row = (conversation_id, role, content or "", thinking, tool_calls_json(tool_calls), tool_name,
               tokens, self._clock())
        cursor = await self._run(_INSERT_MESSAGE, row)
        return message_from_row({"id": cursor.lastrowid, **dict(zip(_MESSAGE_COLUMNS, row))})

    async def append_messages(self, conversation_id: int, messages: Sequence[MessageInput]
                              ) -> list[StoredMessage]:
        """Append ollama.Message objects (or mappings with the same keys and an optional
        "tokens") in one transaction: all of them land or none."""
        now = self._clock()
        rows = [(conversation_id, m["role"], m.get("content") or "", m.get("thinking"),
                 tool_calls_json(m.get("tool_calls")), m.get("tool_name"),
                 m.get("tokens") if isinstance(m, Mapping) else None, now) for m in messages]
        stored = []
        async with self._transaction() as db:
            for row in rows:
                cursor = await db.execute(_INSERT_MESSAGE, row)
                stored.append(message_from_row({"id": cursor.lastrowid, **dict(zip(_MESSAGE_COLUMNS, row))}))
        return stored

    async def history(self, conversation_id: int, limit: int | None = None) -> list[StoredMessage]:
        """Messages oldest first; with `limit`, only the newest `limit` of them (still in order)."""
        rows = await self._all(message_from_row, "SELECT * FROM messages WHERE conversation_id = ?"
                               " ORDER BY id DESC LIMIT ?", (conversation_id, -1 if limit is None else limit))
        return rows[::-1]

    # -- memory --------------------------------------------------------------------------------

    async def get_memory(self, owner_id: int) -> str:
        text = await self._one(lambda r: str(r["text"]), "SELECT text FROM memory WHERE owner_id = ?",
                               (owner_id,))
        return text or ""

    async def set_memory(self, owner_id: int, text: str) -> None:
        """Replace the user's memory; text over MEMORY_MAX_CHARS is refused with a StoreError."""
        if len(text) > MEMORY_MAX_CHARS:
            raise StoreError(f"Memory is limited to {MEMORY_MAX_CHARS} characters (got {len(text)});"
                             " shorten it and try again.")
        await self._run(
            "INSERT INTO memory (owner_id, text, updated_at) VALUES (?, ?, ?) ON CONFLICT (owner_id)"
            " DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
            (owner_id, text, self._clock()))

    # -- tasks ---------------------------------------------------------------------------------

    async def create_task(self, owner_id: int, conversation_id: int | None, prompt: str, *,
                          guild_id: int | None = None, message_ref: str | None = None) -> Task:
        """A new "queued" task; its id is the task number users see."""
        cursor = await self._run(
            "INSERT INTO tasks (owner_id, conversation_id, prompt, status, created_at, guild_id,"
            " message_ref) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
            (owner_id, conversation_id, prompt, self._clock(), guild_id, message_ref))
        return await self._task_or_raise(cursor.lastrowid or 0)

    async def set_task_status(self, task_id: int, status: TaskStatus, *, error: str | None = None,
                              steps: int | None = None, tokens: int | None = None) -> Task:
        """Set the status: running stamps started_at (once), a terminal status stamps finished_at
        and any other clears it. error/steps/tokens are kept unless given. Unknown id -> StoreError."""
        now = self._clock()
        await self._run(
            "UPDATE tasks SET status = ?, started_at = CASE WHEN ? THEN COALESCE(started_at, ?)"
            " ELSE started_at END, finished_at = CASE WHEN ? THEN ? ELSE NULL END,"
            " error = COALESCE(?, error), steps = COALESCE(?, steps), tokens = COALESCE(?, tokens)"
            " WHERE id = ?", (status, status == "running", now, status in TERMINAL_STATUSES, now,
                              error, steps, tokens, task_id))
        return await self._task_or_raise(task_id)

    async def _task_or_raise(self, task_id: int) -> Task:
        task = await self.get_task(task_id)
        if task is None:
            raise StoreError(f"There is no task #{task_id}.")
        return task

    async def set_task_message_ref(self, task_id: int, message_ref: str | None) -> None:
        await self._run("UPDATE tasks SET message_ref = ? WHERE id = ?", (message_ref, task_id))

    async def get_task(self, task_id: int) -> Task | None:
        return await self._one(lambda r: Task(**r), "SELECT * FROM tasks WHERE id = ?", (task_id,))

    async def list_tasks(self, owner_id: int | None = None, limit: int = 20) -> list[Task]:
        """Newest first; owner_id None lists everyone's (for admins)."""
        return await self._all(lambda r: Task(**r), "SELECT * FROM tasks WHERE (? IS NULL OR"
                               " owner_id = ?) ORDER BY id DESC LIMIT ?", (owner_id, owner_id, limit))

    async def tasks_of_conversation(self, conversation_id: int) -> list[Task]:
        """Oldest first."""
        return await self._all(lambda r: Task(**r), "SELECT * FROM tasks WHERE conversation_id = ?"
                               " ORDER BY id", (conversation_id,))

    async def mark_interrupted(self) -> int:
        """Call at start: every queued or running task becomes "interrupted". Returns how many."""
        cursor = await self._run(
            "UPDATE tasks SET status = 'interrupted', finished_at = ?, error = COALESCE(error,"
            " 'interrupted by a restart of the bot') WHERE status IN ('queued', 'running')",
            (self._clock(),))
        return cursor.rowcount

    # -- outbox --------------------------------------------------------------------------------

    async def enqueue_notification(self, owner_id: int, conversation_id: int | None, text: str,
                                   origin: Origin, source_key: str | None = None) -> OutboxItem | None:
        """Store a notification, due at once. With a source_key already stored (the same VM
        notification sent again), nothing is stored and None is returned."""
        now = self._clock()
        cursor = await self._run(
            "INSERT INTO outbox (owner_id, conversation_id, text, origin, created_at, next_attempt_at, source_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (owner_id, conversation_id, text, origin, now, now, source_key))
        if not cursor.rowcount:
            return None
        return OutboxItem(cursor.lastrowid or 0, owner_id, conversation_id, text, origin, now, 0, now,
                          None, None, None, source_key)

    async def due_notifications(self, now: float | None = None, limit: int = 50) -> list[OutboxItem]:
        """Undelivered items whose next attempt is due (next_attempt_at <= now), oldest first."""
        return await self._all(
            lambda r: OutboxItem(**r), "SELECT * FROM outbox WHERE delivered_at IS NULL AND"
            " next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
            (self._clock() if now is None else now, limit))

    async def mark_delivered(self, item_id: int, via: DeliveredVia) -> None:
        await self._run("UPDATE outbox SET delivered_at = ?, delivered_via = ?,"
                        " attempts = attempts + 1 WHERE id = ?", (self._clock(), via, item_id))

    async def mark_attempt_failed(self, item_id: int, error: str, next_attempt_at: float) -> None:
        await self._run("UPDATE outbox SET attempts = attempts + 1, last_error = ?,"
                        " next_attempt_at = ? WHERE id = ?", (error, next_attempt_at, item_id))

    async def reschedule_notification(self, item_id: int, next_attempt_at: float) -> None:
        """Postpone without counting an attempt (a throttled user)."""
        await self._run("UPDATE outbox SET next_attempt_at = ? WHERE id = ?", (next_attempt_at, item_id))

    async def count_recent_notifications(self, owner_id: int, since: float) -> int:
        """Notifications of this user created at or after `since` (delivered or not)."""
        return await self._count("SELECT COUNT(*) FROM outbox WHERE owner_id = ? AND created_at >= ?",
                                 (owner_id, since))

    async def pending_count(self) -> int:
        return await self._count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")

    # -- links ---------------------------------------------------------------------------------

    async def create_link(self, token_hash: str, owner_id: int, kind: LinkKind, vm_key: str,
                          target: str, expires_at: float) -> Link:
        """Store a link by the hash of its token (never the raw token)."""
        now = self._clock()
        cursor = await self._run(
            "INSERT INTO links (token_hash, owner_id, kind, vm_key, target, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (token_hash, owner_id, kind, vm_key, target, now, expires_at))
        return Link(cursor.lastrowid or 0, token_hash, owner_id, kind, vm_key, target, now, expires_at,
                    False)

    async def find_link(self, token_hash: str, now: float | None = None) -> Link | None:
        """The live link with this token hash; None if unknown, revoked or expired."""
        return await self._one(link_from_row, "SELECT * FROM links WHERE token_hash = ? AND revoked = 0 AND"
                               " expires_at > ?", (token_hash, self._clock() if now is None else now))

    async def revoke_link(self, link_id: int) -> bool:
        """True if a live link was revoked."""
        cursor = await self._run("UPDATE links SET revoked = 1 WHERE id = ? AND revoked = 0", (link_id,))
        return cursor.rowcount > 0

    async def revoke_links(self, owner_id: int, kind: LinkKind | None = None) -> int:
        cursor = await self._run("UPDATE links SET revoked = 1 WHERE owner_id = ? AND"
                                 " (? IS NULL OR kind = ?) AND revoked = 0", (owner_id, kind, kind))
        return cursor.rowcount

    async def delete_expired_links(self, now: float | None = None) -> int:
        """Delete the expired and the revoked links (both are dead); returns how many."""
        cursor = await self._run("DELETE FROM links WHERE expires_at <= ? OR revoked = 1",
                                 (self._clock() if now is None else now,))
        return cursor.rowcount
