"""vmd's notifications: the `notify` command's unix socket and the pending queue, persisted until the
bot acknowledges them (so they survive a helper restart and wait while no bot is attached)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import vmd_sys

log = logging.getLogger("vmd.notes")
TEXT_LIMIT = 1900
TRUNCATED = " [... truncated]"


class NotificationStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.next_nid = 1
        self.pending: list[dict[str, Any]] = []
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            self.next_nid = int(data["next_nid"])
            self.pending = list(data["pending"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def _save(self) -> None:
        vmd_sys.write_json_atomic(self.path, {"next_nid": self.next_nid, "pending": self.pending}, sync=True)

    def add(self, text: str, conversation: str | None) -> dict[str, Any]:
        note = {"nid": self.next_nid, "text": text, "conversation": conversation, "ts": round(time.time(), 3)}
        self.next_nid += 1
        self.pending.append(note)
        self._save()
        for listener in list(self.listeners):
            listener(note)
        return note

    def ack(self, nids: list[int]) -> None:
        drop = {int(n) for n in nids}
        kept = [n for n in self.pending if n["nid"] not in drop]
        if len(kept) != len(self.pending):
            self.pending = kept
            self._save()


def clean_text(text: Any) -> tuple[str, bool]:
    text = str(text or "").strip()
    if len(text) <= TEXT_LIMIT:
        return text, False
    return text[: TEXT_LIMIT - len(TRUNCATED)] + TRUNCATED, True


async def handle_notify(store: NotificationStore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One JSON line {text, conversation} -> "ok" (or "ok truncated", or "error: ...")."""
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        try:
            req = json.loads(line)
            text, truncated = clean_text(req.get("text"))
            conv = req.get("conversation")
            conv = str(conv) if conv else None
        except (ValueError, AttributeError):
            writer.write(b"error: the request is not a JSON object with a text\n")
            return
        if not text:
            writer.write(b"error: the notification text is empty\n")
            return
        store.add(text, conv)
        writer.write(b"ok truncated\n" if truncated else b"ok\n")
    except (TimeoutError, OSError, asyncio.LimitOverrunError, ValueError) as exc:
        log.warning("notify request failed: %s", exc)
    finally:
        try:
            await writer.drain()
            writer.close()
        except OSError:
            pass


async def serve_notify(store: NotificationStore, path: str) -> asyncio.AbstractServer:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(lambda r, w: handle_notify(store, r, w), path, limit=1 << 20)
    os.chmod(path, 0o600)
    return server
