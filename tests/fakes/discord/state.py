"""The fake's world: one guild with roles, members and channels, DMs, messages, threads and the CDN.

It knows nothing of HTTP: REST handlers and the test API call these methods, and every change that
Discord would announce goes out through ``dispatch`` (wired to the gateway by the server).
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .limits import DEFAULT_UPLOAD_LIMIT
from .payloads import (
    channel_payload,
    member_payload,
    message_payload,
    role_payload,
    thread_member_payload,
    thread_payload,
)
from .records import (
    DM,
    EPHEMERAL,
    JSON,
    LOADING,
    PRIVATE_THREAD,
    TEXT,
    ErrorRecord,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    Snowflakes,
    Upload,
    utcnow,
)

ALL_PERMISSIONS = (1 << 53) - 1
ADMINISTRATOR = 1 << 3
MANAGE_THREADS = 1 << 34
EVERYONE_PERMISSIONS = sum(1 << bit for bit in (6, 10, 11, 14, 15, 16, 31, 35, 36, 38))
NONCE_TTL = 300.0
SUPPRESS_EMBEDS = 4
MENTION = re.compile(r"<@!?(\d+)>")

Dispatcher = Callable[[str, JSON], None]


class FakeState:
    def __init__(self, *, guild_name: str, bot_name: str, channel_names: tuple[str, ...],
                 upload_limit: int = DEFAULT_UPLOAD_LIMIT) -> None:
        self.ids = Snowflakes()
        self.base_url = ""
        self.upload_limit = upload_limit
        self.token = f"fake.{secrets.token_urlsafe(24)}"
        self.dispatch: Dispatcher = lambda event, data: None
        self.on_change: Callable[[], None] = lambda: None
        self.users: dict[int, FakeUser] = {}
        self.member_roles: dict[int, list[int]] = {}
        self.joined_at: dict[int, dt.datetime] = {}
        self.roles: dict[int, FakeRole] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.channel_messages: dict[int, list[FakeMessage]] = {}
        self.cdn: dict[int, FakeAttachment] = {}
        self.dm_channels: dict[int, int] = {}
        self.closed_dms: set[int] = set()
        self.nonces: dict[tuple[int, int, str], tuple[float, int]] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.errors: list[ErrorRecord] = []
        self.guild = FakeGuild(self.ids.next(), guild_name)
        self.roles[self.guild.id] = FakeRole(self.guild.id, "@everyone", EVERYONE_PERMISSIONS)
        self.application_id = self.ids.next()
        self.bot = self._new_user(bot_name, bot=True, user_id=self.application_id)
        self.owner = self._new_user("owner")
        for name in channel_names:
            self.add_channel(name)

    # -- directory -------------------------------------------------------------------------------

    def _new_user(self, name: str, *, bot: bool = False, user_id: int | None = None) -> FakeUser:
        user = FakeUser(user_id or self.ids.next(), name, bot)
        self.users[user.id] = user
        self.member_roles[user.id] = []
        self.joined_at[user.id] = utcnow()
        return user

    def add_user(self, name: str, roles: list[int], *, bot: bool = False) -> FakeUser:
        user = self._new_user(name, bot=bot)
        self.member_roles[user.id] = list(roles)
        self.dispatch("GUILD_MEMBER_ADD", self._member_event(user))
        self.changed()
        return user

    def set_roles(self, user: FakeUser, roles: list[int]) -> None:
        self.member_roles[user.id] = list(roles)
        self.dispatch("GUILD_MEMBER_UPDATE", self._member_event(user))
        self.changed()

    def _member_event(self, user: FakeUser) -> JSON:
        return {**member_payload(self, user), "guild_id": str(self.guild.id)}

    def add_role(self, name: str, permissions: int) -> FakeRole:
        role = FakeRole(self.ids.next(), name, permissions, position=len(self.roles))
        self.roles[role.id] = role
        self.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(self.guild.id), "role": role_payload(role)})
        return role

    def add_channel(self, name: str, *, topic: str | None = None) -> FakeChannel:
        position = sum(1 for c in self.channels.values() if c.type == TEXT)
        channel = FakeChannel(self.ids.next(), TEXT, name, self.guild.id, position=position, topic=topic)
        self._add(channel)
        self.dispatch("CHANNEL_CREATE", channel_payload(self, channel))
        return channel

    def _add(self, channel: FakeChannel) -> None:
        self.channels[channel.id] = channel
        self.channel_messages[channel.id] = []

    def dm_channel(self, user_id: int) -> FakeChannel:
        """The DM channel between the bot and this user (created on first use)."""
        channel_id = self.dm_channels.get(user_id)
        if channel_id is None:
            channel = FakeChannel(self.ids.next(), DM, "", None, recipient_id=user_id)
            self._add(channel)
            self.dm_channels[user_id] = channel.id
            return channel
        return self.channels[channel_id]

    def permissions_of(self, user_id: int) -> int:
        if user_id == self.owner.id:
            return ALL_PERMISSIONS
        perms = self.roles[self.guild.id].permissions
        for role_id in self.member_roles.get(user_id, []):
            perms |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def can_see(self, user_id: int, channel: FakeChannel) -> bool:
        if channel.is_dm:
            return user_id in (channel.recipient_id, self.bot.id)
        if channel.type != PRIVATE_THREAD or user_id in channel.member_ids:
            return True
        return bool(self.permissions_of(user_id) & MANAGE_THREADS)

    def changed(self) -> None:
        self.on_change()

    # -- files -----------------------------------------------------------------------------------

    def store_file(self, upload: Upload, *, folder: str, description: str | None = None,
                   ephemeral: bool = False) -> FakeAttachment:
        att_id = self.ids.next()
        content_type = upload.content_type
        if content_type in (None, "application/octet-stream"):
            content_type = mimetypes.guess_type(upload.filename)[0] or content_type
        url = f"{self.base_url}/{folder}/{att_id}/{quote(upload.filename)}"
        att = FakeAttachment(att_id, upload.filename, upload.data, url, content_type, description, ephemeral)
        self.cdn[att_id] = att
        return att

    def _attachments(self, channel: FakeChannel, body: JSON, uploads: list[Upload],
                     existing: tuple[FakeAttachment, ...]) -> tuple[FakeAttachment, ...]:
        folder = f"attachments/{channel.id}"
        entries = body.get("attachments")
        if entries is None:
            return existing + tuple(self.store_file(u, folder=folder) for u in uploads)
        kept = {a.id: a for a in existing}
        result: list[FakeAttachment] = []
        for entry in entries:
            ref = int(entry["id"])
            if ref in kept:
                result.append(kept[ref])
            elif 0 <= ref < len(uploads):
                upload = uploads[ref]
                if entry.get("filename"):
                    upload = Upload(entry["filename"], upload.data, upload.content_type)
                result.append(self.store_file(upload, folder=folder, description=entry.get("description")))
        return tuple(result)

    # -- messages --------------------------------------------------------------------------------

    def _mentions(self, content: str, allowed: JSON | None, reply_author: int | None) -> tuple[tuple[int, ...], bool]:
        ids = [int(x) for x in MENTION.findall(content) if int(x) in self.users]
        everyone = "@everyone" in content or "@here" in content
        if allowed is None:
            users, ping_all = ids, everyone
            if reply_author is not None:
                users.append(reply_author)
        else:
            parse = allowed.get("parse") or []
            explicit = {int(u) for u in allowed.get("users") or []}
            users = [u for u in ids if "users" in parse or u in explicit]
            ping_all = everyone and "everyone" in parse
            if reply_author is not None and allowed.get("replied_user"):
                users.append(reply_author)
        return tuple(dict.fromkeys(users)), ping_all

    def _version(self, channel: FakeChannel, body: JSON, uploads: list[Upload], *, flags: int,
                 previous: MessageVersion | None, reference: JSON | None = None) -> MessageVersion:
        def pick(key: str, default: Any) -> Any:
            if key in body:
                return body[key] if body[key] is not None else default
            return default if previous is None else getattr(previous, key)

        content = str(pick("content", ""))
        allowed: JSON | None = body.get("allowed_mentions") if "allowed_mentions" in body else (
            previous.allowed_mentions if previous is not None else None)
        reply_author = None
        if reference and int(reference.get("message_id", 0)) in self.messages:
            reply_author = self.messages[int(reference["message_id"])].author_id
        mentions, everyone = self._mentions(content, allowed, reply_author)
        existing = () if previous is None else previous.attachments
        return MessageVersion(
            content=content, embeds=tuple(pick("embeds", ())), components=tuple(pick("components", ())),
            attachments=self._attachments(channel, body, uploads, existing), flags=flags,
            allowed_mentions=allowed, mentions=mentions, mention_everyone=everyone, at=utcnow(),
        )

    def create_message(self, channel: FakeChannel, author_id: int, body: JSON, uploads: list[Upload], *,
                       interaction: FakeInteraction | None = None, msg_type: int = 0,
                       extra_flags: int = 0) -> FakeMessage:
        reference = body.get("message_reference")
        flags = (int(body.get("flags") or 0) & (EPHEMERAL | SUPPRESS_EMBEDS | 4096 | 32768)) | extra_flags
        version = self._version(channel, body, uploads, flags=flags, previous=None, reference=reference)
        msg = FakeMessage(
            id=self.ids.next(), channel_id=channel.id, guild_id=channel.guild_id, author_id=author_id,
            versions=[version], type=msg_type, nonce=body.get("nonce"), tts=bool(body.get("tts")),
            webhook_id=self.application_id if interaction else None,
            interaction_id=interaction.id if interaction else None, reference=reference,
        )
        self.messages[msg.id] = msg
        self.channel_messages[channel.id].append(msg)
        if not msg.ephemeral:
            channel.last_message_id = msg.id
            if channel.is_thread:
                channel.message_count += 1
                channel.archived = False
                if author_id not in channel.member_ids:
                    channel.member_ids.append(author_id)
            self.dispatch("MESSAGE_CREATE", message_payload(self, msg))
        self.changed()
        return msg

    def edit_message(self, msg: FakeMessage, body: JSON, uploads: list[Upload]) -> FakeMessage:
        channel = self.channels[msg.channel_id]
        flags = msg.flags & ~LOADING
        if "flags" in body and body["flags"] is not None:
            flags = (flags & ~SUPPRESS_EMBEDS) | (int(body["flags"]) & SUPPRESS_EMBEDS)
        version = self._version(channel, body, uploads, flags=flags, previous=msg.current, reference=msg.reference)
        msg.versions.append(version)
        if not msg.ephemeral:
            self.dispatch("MESSAGE_UPDATE", message_payload(self, msg))
        self.changed()
        return msg

    def delete_message(self, msg: FakeMessage) -> None:
        msg.deleted = True
        if not msg.ephemeral:
            data: JSON = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            self.dispatch("MESSAGE_DELETE", data)
        self.changed()

    def find_nonce(self, channel_id: int, author_id: int, nonce: str) -> FakeMessage | None:
        found = self.nonces.get((channel_id, author_id, nonce))
        if found is None or time.monotonic() - found[0] > NONCE_TTL:
            return None
        return self.messages.get(found[1])

    def remember_nonce(self, msg: FakeMessage) -> None:
        if msg.nonce is not None:
            self.nonces[(msg.channel_id, msg.author_id, str(msg.nonce))] = (time.monotonic(), msg.id)

    # -- threads ---------------------------------------------------------------------------------

    def create_thread(self, parent: FakeChannel, name: str, thread_type: int, owner_id: int, *,
                      starter: FakeMessage | None = None, auto_archive: int = 1440,
                      invitable: bool = True) -> FakeChannel:
        thread = FakeChannel(
            starter.id if starter else self.ids.next(), thread_type, name, self.guild.id, parent_id=parent.id,
            owner_id=owner_id, auto_archive_duration=auto_archive, invitable=invitable, member_ids=[owner_id],
        )
        self._add(thread)
        if starter is not None:
            starter.thread_id = thread.id
        self.dispatch("THREAD_CREATE", {**thread_payload(self, thread, member_for=self.bot.id), "newly_created": True})
        self.changed()
        return thread

    def add_thread_member(self, thread: FakeChannel, user_id: int) -> None:
        if user_id in thread.member_ids:
            return
        thread.member_ids.append(user_id)
        if user_id == self.bot.id:
            self.dispatch("THREAD_CREATE", thread_payload(self, thread, member_for=self.bot.id))
        self.dispatch("THREAD_MEMBERS_UPDATE", {
            "id": str(thread.id), "guild_id": str(thread.guild_id), "member_count": len(thread.member_ids),
            "added_members": [thread_member_payload(thread, user_id)], "removed_member_ids": [],
        })
        self.changed()

    def remove_thread_member(self, thread: FakeChannel, user_id: int) -> None:
        if user_id in thread.member_ids:
            thread.member_ids.remove(user_id)
            self.dispatch("THREAD_MEMBERS_UPDATE", {
                "id": str(thread.id), "guild_id": str(thread.guild_id), "member_count": len(thread.member_ids),
                "removed_member_ids": [str(user_id)],
            })
            self.changed()

    def update_thread(self, thread: FakeChannel, body: JSON) -> None:
        for key in ("name", "archived", "locked", "invitable", "auto_archive_duration"):
            if key in body and body[key] is not None:
                setattr(thread, key, body[key])
        self.dispatch("THREAD_UPDATE", thread_payload(self, thread))
        self.changed()

    def record_error(self, record: ErrorRecord, interaction: FakeInteraction | None = None) -> None:
        self.errors.append(record)
        if interaction is not None:
            interaction.errors.append(record)
        self.changed()
