"""Records -> the JSON shapes discord.py 2.7 parses (users, members, roles, channels, messages, guild)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import (
    DM,
    JSON,
    FakeAttachment,
    FakeChannel,
    FakeMessage,
    FakeRole,
    FakeUser,
    iso,
)

if TYPE_CHECKING:
    from .state import FakeState


def user_payload(user: FakeUser) -> JSON:
    return {
        "id": str(user.id), "username": user.name, "discriminator": "0", "global_name": user.name,
        "avatar": None, "bot": user.bot, "public_flags": 0, "flags": 0,
    }


def member_payload(state: FakeState, user: FakeUser, *, with_user: bool = True,
                   permissions: bool = False) -> JSON:
    data: JSON = {
        "roles": [str(r) for r in state.member_roles.get(user.id, [])],
        "joined_at": iso(state.joined_at.get(user.id)), "deaf": False, "mute": False, "flags": 0,
        "nick": None, "avatar": None, "premium_since": None, "pending": False,
        "communication_disabled_until": None,
    }
    if with_user:
        data["user"] = user_payload(user)
    if permissions:
        data["permissions"] = str(state.permissions_of(user.id))
    return data


def role_payload(role: FakeRole) -> JSON:
    return {
        "id": str(role.id), "name": role.name, "permissions": str(role.permissions),
        "position": role.position, "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False, "managed": False, "mentionable": False, "icon": None, "unicode_emoji": None,
        "flags": 0,
    }


def attachment_payload(att: FakeAttachment) -> JSON:
    data: JSON = {
        "id": str(att.id), "filename": att.filename, "size": att.size, "url": att.url,
        "proxy_url": att.url, "content_type": att.content_type, "flags": 0,
    }
    if att.description is not None:
        data["description"] = att.description
    if att.ephemeral:
        data["ephemeral"] = True
    return data


def channel_payload(state: FakeState, channel: FakeChannel) -> JSON:
    if channel.is_thread:
        return thread_payload(state, channel)
    if channel.type == DM:
        recipient = state.users[channel.recipient_id or 0]
        return {"id": str(channel.id), "type": DM, "last_message_id": _opt(channel.last_message_id),
                "recipients": [user_payload(recipient)], "flags": 0}
    return {
        "id": str(channel.id), "type": channel.type, "guild_id": str(channel.guild_id), "name": channel.name,
        "position": channel.position, "parent_id": _opt(channel.parent_id), "topic": channel.topic,
        "nsfw": False, "permission_overwrites": [], "rate_limit_per_user": 0,
        "last_message_id": _opt(channel.last_message_id), "flags": 0,
    }


def app_channel_payload(state: FakeState, channel: FakeChannel, user_id: int) -> JSON:
    """The channel object of an interaction / a resolved channel option (with permissions)."""
    data = channel_payload(state, channel)
    data["permissions"] = str(state.permissions_of(user_id))
    return data


def thread_payload(state: FakeState, thread: FakeChannel, *, member_for: int | None = None) -> JSON:
    data: JSON = {
        "id": str(thread.id), "type": thread.type, "guild_id": str(thread.guild_id), "name": thread.name,
        "parent_id": str(thread.parent_id), "owner_id": str(thread.owner_id),
        "last_message_id": _opt(thread.last_message_id), "rate_limit_per_user": 0, "flags": 0,
        "message_count": thread.message_count, "total_message_sent": thread.message_count,
        "member_count": min(len(thread.member_ids), 50), "applied_tags": [],
        "thread_metadata": {
            "archived": thread.archived, "locked": thread.locked, "invitable": thread.invitable,
            "auto_archive_duration": thread.auto_archive_duration,
            "archive_timestamp": iso(thread.created_at), "create_timestamp": iso(thread.created_at),
        },
    }
    if member_for is not None and member_for in thread.member_ids:
        data["member"] = thread_member_payload(thread, member_for)
    return data


def thread_member_payload(thread: FakeChannel, user_id: int) -> JSON:
    return {"id": str(thread.id), "user_id": str(user_id), "join_timestamp": iso(thread.created_at), "flags": 0}


def message_payload(state: FakeState, msg: FakeMessage) -> JSON:
    version = msg.current
    author = state.users[msg.author_id]
    data: JSON = {
        "id": str(msg.id), "channel_id": str(msg.channel_id), "type": msg.type, "content": version.content,
        "author": user_payload(author), "attachments": [attachment_payload(a) for a in version.attachments],
        "embeds": list(version.embeds), "components": list(version.components),
        "mentions": [user_payload(state.users[u]) for u in version.mentions if u in state.users],
        "mention_roles": [], "mention_everyone": version.mention_everyone, "pinned": False, "tts": msg.tts,
        "timestamp": iso(msg.created_at), "edited_timestamp": iso(msg.edited_at), "flags": version.flags,
    }
    if msg.nonce is not None:
        data["nonce"] = msg.nonce
    if msg.guild_id is not None:
        data["guild_id"] = str(msg.guild_id)
        if msg.webhook_id is None and author.id in state.member_roles:
            data["member"] = member_payload(state, author, with_user=False)
    if msg.webhook_id is not None:
        data["webhook_id"] = str(msg.webhook_id)
        data["application_id"] = str(state.application_id)
    if msg.interaction_id is not None:
        data["interaction_metadata"] = _interaction_metadata(state, msg.interaction_id)
    if msg.reference is not None:
        data["message_reference"] = msg.reference
    if msg.thread_id is not None and msg.thread_id in state.channels:
        data["thread"] = thread_payload(state, state.channels[msg.thread_id])
    return data


def _interaction_metadata(state: FakeState, interaction_id: int) -> JSON:
    inter = state.interactions[interaction_id]
    data: JSON = {
        "id": str(inter.id), "type": inter.type, "user": user_payload(state.users[inter.user_id]),
        "authorizing_integration_owners": {"0": str(inter.guild_id)} if inter.guild_id else {"1": str(inter.user_id)},
    }
    if inter.original_id is not None:
        data["original_response_message_id"] = str(inter.original_id)
    if inter.message_id is not None:
        data["interacted_message_id"] = str(inter.message_id)
    if inter.name is not None:
        data["name"] = inter.name
    return data


def guild_payload(state: FakeState) -> JSON:
    """GUILD_CREATE's d: the guild with roles, members, channels and active threads."""
    channels = [c for c in state.channels.values() if c.guild_id == state.guild.id]
    members = [state.users[u] for u in state.member_roles]
    return {
        "id": str(state.guild.id), "name": state.guild.name, "icon": None, "splash": None, "banner": None,
        "owner_id": str(state.owner.id), "unavailable": False, "large": False, "member_count": len(members),
        "joined_at": iso(state.joined_at.get(state.bot.id)), "features": [], "emojis": [], "stickers": [],
        "roles": [role_payload(r) for r in state.roles.values()],
        "members": [member_payload(state, u) for u in members],
        "channels": [channel_payload(state, c) for c in channels if not c.is_thread],
        "threads": [thread_payload(state, c, member_for=state.bot.id)
                    for c in channels if c.is_thread and not c.archived],
        "presences": [], "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
        "soundboard_sounds": [], "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "premium_tier": 0,
        "premium_subscription_count": 0, "preferred_locale": "en-US", "system_channel_id": None,
        "system_channel_flags": 0, "rules_channel_id": None, "afk_channel_id": None, "afk_timeout": 300,
        "application_id": None, "max_members": 500000, "premium_progress_bar_enabled": False,
    }


def _opt(value: int | None) -> str | None:
    return None if value is None else str(value)
