"""The gateway websocket: HELLO, heartbeat ACK, IDENTIFY -> READY + GUILD_CREATE, RESUME with replay,
member chunk requests, and dispatches filtered by the session's intents (message content stripped
without the MESSAGE_CONTENT intent, as Discord does). Frames are plain JSON text: discord.py only
inflates binary frames, so compression is never needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .payloads import guild_payload, member_payload, user_payload
from .records import JSON
from .state import FakeState

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250
GUILDS, GUILD_MEMBERS, GUILD_MESSAGES, GUILD_REACTIONS, GUILD_TYPING = 1 << 0, 1 << 1, 1 << 9, 1 << 10, 1 << 11
DM_MESSAGES, DM_REACTIONS, DM_TYPING, MESSAGE_CONTENT = 1 << 12, 1 << 13, 1 << 14, 1 << 15
AUTHENTICATION_FAILED = 4004


class Connection:
    """One websocket; a writer task sends queued frames in order (``flush`` waits for them)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while True:
            frame = await self.queue.get()
            try:
                if not self.ws.closed:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("gateway frame not sent: %s", exc)
            finally:
                self.queue.task_done()

    def send(self, payload: JSON) -> None:
        self.queue.put_nowait(json.dumps(payload))

    async def stop(self) -> None:
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.writer


@dataclass(eq=False)
class Session:
    id: str
    intents: int
    seq: int = 0
    conn: Connection | None = None
    history: deque[JSON] = field(default_factory=lambda: deque(maxlen=2000))

    def dispatch(self, event: str, data: JSON) -> None:
        self.seq += 1
        frame = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.history.append(frame)
        if self.conn is not None:
            self.conn.send(frame)


def required_intent(event: str, data: JSON) -> int | None:
    in_guild = "guild_id" in data
    if event.startswith("MESSAGE_REACTION"):
        return GUILD_REACTIONS if in_guild else DM_REACTIONS
    if event.startswith("MESSAGE_"):
        return GUILD_MESSAGES if in_guild else DM_MESSAGES
    if event == "TYPING_START":
        return GUILD_TYPING if in_guild else DM_TYPING
    if event.startswith("GUILD_MEMBER") and event != "GUILD_MEMBERS_CHUNK":
        return GUILD_MEMBERS
    if event.startswith(("GUILD_", "CHANNEL_", "THREAD_")):
        return GUILDS
    return None


class GatewayHub:
    def __init__(self, state: FakeState, *, resume_url: str = "") -> None:
        self.state = state
        self.resume_url = resume_url
        self.sessions: dict[str, Session] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.identifies = 0
        self.resumes = 0
        state.dispatch = self.dispatch

    @property
    def connected(self) -> bool:
        return any(s.conn is not None for s in self.sessions.values())

    def dispatch(self, event: str, data: JSON) -> None:
        for session in self.sessions.values():
            needed = required_intent(event, data)
            if needed is not None and not session.intents & needed:
                continue
            session.dispatch(event, self._visible(session, event, data))

    def _visible(self, session: Session, event: str, data: JSON) -> JSON:
        """Without MESSAGE_CONTENT, guild messages lose content unless they mention or come from the bot."""
        if session.intents & MESSAGE_CONTENT or event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            return data
        bot_id = str(self.state.bot.id)
        mentioned = any(m.get("id") == bot_id for m in data.get("mentions", []))
        if "guild_id" not in data or data.get("author", {}).get("id") == bot_id or mentioned:
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    async def flush(self) -> None:
        """Wait until every queued frame has been written to its socket."""
        for session in list(self.sessions.values()):
            if session.conn is not None:
                await session.conn.queue.join()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.sockets.add(ws)
        conn = Connection(ws)
        conn.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None})
        session: Session | None = None
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                session = await self._on_frame(ws, conn, session, json.loads(msg.data)) or session
        finally:
            if session is not None and session.conn is conn:
                session.conn = None
            await conn.stop()
            self.sockets.discard(ws)
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, conn: Connection, session: Session | None,
                        frame: JSON) -> Session | None:
        op, data = frame.get("op"), frame.get("d") or {}
        if op == 1:
            conn.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            return await self._identify(ws, conn, data)
        elif op == 6:
            return await self._resume(ws, conn, data)
        elif op == 8 and session is not None:
            self._chunk(session, data)
        return None

    async def _identify(self, ws: web.WebSocketResponse, conn: Connection, data: JSON) -> Session | None:
        if data.get("token") not in (self.state.token, f"Bot {self.state.token}"):
            await conn.queue.join()
            await ws.close(code=AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        self.identifies += 1
        session = Session(secrets.token_hex(16), int(data.get("intents", 0)), conn=conn)
        self.sessions = {session.id: session}  # one bot: a new IDENTIFY replaces the old session
        state = self.state
        session.dispatch("READY", {
            "v": 10, "user": {**user_payload(state.bot), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(state.guild.id), "unavailable": True}], "session_id": session.id,
            "resume_gateway_url": self.resume_url, "session_type": "normal", "private_channels": [],
            "relationships": [], "application": {"id": str(state.application_id), "flags": 0},
            "geo_ordered_rtc_regions": [], "user_settings": {}, "presences": [],
        })
        if session.intents & GUILDS:
            session.dispatch("GUILD_CREATE", guild_payload(state))
        return session

    async def _resume(self, ws: web.WebSocketResponse, conn: Connection, data: JSON) -> Session | None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") not in (self.state.token, f"Bot {self.state.token}"):
            conn.send({"op": 9, "d": False, "s": None, "t": None})
            return None
        self.resumes += 1
        seen = int(data.get("seq") or 0)
        for frame in session.history:
            if frame["s"] > seen:
                conn.send(frame)
        session.conn = conn
        session.dispatch("RESUMED", {})
        return session

    def _chunk(self, session: Session, data: JSON) -> None:
        state = self.state
        wanted = {int(u) for u in data.get("user_ids") or []}
        query = str(data.get("query") or "").lower()
        limit = int(data.get("limit") or 0) or len(state.member_roles)
        users = [state.users[u] for u in state.member_roles
                 if (not wanted or u in wanted) and state.users[u].name.lower().startswith(query)][:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(state.guild.id), "members": [member_payload(state, u) for u in users],
            "chunk_index": 0, "chunk_count": 1, "not_found": [str(u) for u in wanted - {u.id for u in users}],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def reconnect(self) -> None:
        """Ask every client to reconnect (op 7); discord.py then RESUMEs."""
        for session in self.sessions.values():
            if session.conn is not None:
                session.conn.send({"op": 7, "d": None, "s": None, "t": None})

    async def close(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"fake discord shutting down")
