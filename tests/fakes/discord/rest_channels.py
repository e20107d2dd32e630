"""REST routes on channels: messages (send, edit, delete, fetch, history), typing, reactions, threads
and thread members."""

from __future__ import annotations

from aiohttp import web

from .limits import (
    ApiError,
    cannot_dm,
    cannot_edit_other,
    check_message,
    invalid_form,
    missing_access,
    unknown_member,
    unknown_message,
)
from .payloads import channel_payload, message_payload, thread_member_payload, thread_payload
from .records import JSON, PRIVATE_THREAD, PUBLIC_THREAD, TEXT, FakeChannel, FakeMessage
from .rest import API, backend, channel_or_404, json_response, no_content, read_body
from .state import FakeState


def _message_or_404(state: FakeState, channel: FakeChannel, message_id: str) -> FakeMessage:
    msg = state.messages.get(int(message_id)) if message_id.isdigit() else None
    if msg is None or msg.channel_id != channel.id or msg.deleted or msg.ephemeral:
        raise unknown_message()
    return msg


def _channel(request: web.Request) -> tuple[FakeState, FakeChannel]:
    state = backend(request).state
    return state, channel_or_404(state, request.match_info["channel_id"])


async def get_channel(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    return json_response(channel_payload(state, channel))


async def edit_channel(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    body, _ = await read_body(request)
    if channel.is_thread:
        state.update_thread(channel, body)
    else:
        channel.name = body.get("name", channel.name)
        channel.topic = body.get("topic", channel.topic)
        state.dispatch("CHANNEL_UPDATE", channel_payload(state, channel))
    return json_response(channel_payload(state, channel))


async def delete_channel(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    data = channel_payload(state, channel)
    del state.channels[channel.id]
    state.dispatch("THREAD_DELETE" if channel.is_thread else "CHANNEL_DELETE", data)
    return json_response(data)


async def send_message(request: web.Request) -> web.Response:
    be = backend(request)
    state, channel = _channel(request)
    body, uploads = await read_body(request)
    if channel.is_dm and channel.recipient_id in state.closed_dms:
        raise cannot_dm()
    nonce = body.get("nonce")
    if nonce is not None and body.get("enforce_nonce"):
        original = state.find_nonce(channel.id, state.bot.id, str(nonce))
        if original is not None:
            return json_response(message_payload(state, original))
    be.limiter.take_channel_write(channel.id)
    check_message(body, uploads, upload_limit=state.upload_limit, creating=True)
    msg = state.create_message(channel, state.bot.id, body, uploads)
    state.remember_nonce(msg)
    return json_response(message_payload(state, msg))


async def edit_message(request: web.Request) -> web.Response:
    be = backend(request)
    state, channel = _channel(request)
    msg = _message_or_404(state, channel, request.match_info["message_id"])
    if msg.author_id != state.bot.id:
        raise cannot_edit_other()
    body, uploads = await read_body(request)
    be.limiter.take_channel_write(channel.id)
    check_message(body, uploads, upload_limit=state.upload_limit, creating=False,
                  kept_attachments=kept_attachments(msg, body))
    return json_response(message_payload(state, state.edit_message(msg, body, uploads)))


def kept_attachments(msg: FakeMessage, body: JSON) -> int:
    if "attachments" not in body:
        return len(msg.attachments)
    ids = {a.id for a in msg.attachments}
    return sum(1 for entry in body["attachments"] or [] if int(entry["id"]) in ids)


async def delete_message(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    msg = _message_or_404(state, channel, request.match_info["message_id"])
    if channel.is_dm and msg.author_id != state.bot.id:
        raise ApiError(403, 50003, "Cannot execute action on a DM channel")
    state.delete_message(msg)
    return no_content()


async def get_message(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    return json_response(message_payload(state, _message_or_404(state, channel, request.match_info["message_id"])))


async def history(request: web.Request) -> web.Response:
    """Newest first, like Discord; ``before``/``after``/``around`` plus ``limit`` (1..100, default 50)."""
    state, channel = _channel(request)
    limit = max(1, min(100, int(request.query.get("limit", 50))))
    visible = [m for m in state.channel_messages[channel.id] if not m.deleted and not m.ephemeral]
    if "after" in request.query:
        after = int(request.query["after"])
        chosen = [m for m in visible if m.id > after][:limit]
    elif "around" in request.query:
        around = int(request.query["around"])
        older = [m for m in visible if m.id <= around][-(limit // 2 + 1):]
        chosen = older + [m for m in visible if m.id > around][: limit - len(older)]
    else:
        before = int(request.query.get("before", 1 << 63))
        chosen = [m for m in visible if m.id < before][-limit:]
    return json_response([message_payload(state, m) for m in reversed(chosen)])


async def typing(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    channel.typing_count += 1
    state.changed()
    return no_content()


async def add_reaction(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    msg = _message_or_404(state, channel, request.match_info["message_id"])
    emoji = request.match_info["emoji"]
    if emoji not in msg.reactions:
        msg.reactions.append(emoji)
    return no_content()


async def remove_reaction(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    msg = _message_or_404(state, channel, request.match_info["message_id"])
    if request.match_info["emoji"] in msg.reactions:
        msg.reactions.remove(request.match_info["emoji"])
    return no_content()


def _thread_body(body: JSON) -> tuple[str, int]:
    name = str(body.get("name") or "")
    if not 1 <= len(name) <= 100:
        raise invalid_form("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    archive = int(body.get("auto_archive_duration") or 1440)
    if archive not in (60, 1440, 4320, 10080):
        raise invalid_form("auto_archive_duration", "BASE_TYPE_CHOICES",
                           "Value must be one of {60, 1440, 4320, 10080}.")
    return name, archive


async def thread_from_message(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    msg = _message_or_404(state, channel, request.match_info["message_id"])
    if channel.type != TEXT:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    if msg.thread_id is not None:
        raise ApiError(400, 160004, "A thread has already been created for this message")
    name, archive = _thread_body((await read_body(request))[0])
    thread = state.create_thread(channel, name, PUBLIC_THREAD, state.bot.id, starter=msg, auto_archive=archive)
    return json_response(thread_payload(state, thread, member_for=state.bot.id))


async def thread_without_message(request: web.Request) -> web.Response:
    state, channel = _channel(request)
    if channel.type != TEXT:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    body, _ = await read_body(request)
    name, archive = _thread_body(body)
    thread_type = int(body.get("type") or PRIVATE_THREAD)
    if thread_type not in (PUBLIC_THREAD, PRIVATE_THREAD):
        raise invalid_form("type", "BASE_TYPE_CHOICES", "Value must be one of {11, 12}.")
    thread = state.create_thread(channel, name, thread_type, state.bot.id, auto_archive=archive,
                                 invitable=bool(body.get("invitable", True)))
    return json_response(thread_payload(state, thread, member_for=state.bot.id))


def _thread_and_user(request: web.Request) -> tuple[FakeState, FakeChannel, int]:
    state, thread = _channel(request)
    if not thread.is_thread:
        raise ApiError(400, 50024, "Cannot execute action on this channel type")
    raw = request.match_info["user_id"]
    user_id = state.bot.id if raw == "@me" else int(raw)
    if user_id not in state.users:
        raise unknown_member()
    return state, thread, user_id


async def add_thread_member(request: web.Request) -> web.Response:
    state, thread, user_id = _thread_and_user(request)
    if thread.archived:
        raise missing_access()
    state.add_thread_member(thread, user_id)
    return no_content()


async def remove_thread_member(request: web.Request) -> web.Response:
    state, thread, user_id = _thread_and_user(request)
    state.remove_thread_member(thread, user_id)
    return no_content()


async def get_thread_member(request: web.Request) -> web.Response:
    _, thread, user_id = _thread_and_user(request)
    if user_id not in thread.member_ids:
        raise unknown_member()
    return json_response(thread_member_payload(thread, user_id))


async def list_thread_members(request: web.Request) -> web.Response:
    _, thread = _channel(request)
    return json_response([thread_member_payload(thread, u) for u in thread.member_ids])


def add_routes(app: web.Application) -> None:
    r = app.router
    base = f"{API}/channels/{{channel_id}}"
    r.add_get(base, get_channel)
    r.add_patch(base, edit_channel)
    r.add_delete(base, delete_channel)
    r.add_get(f"{base}/messages", history)
    r.add_post(f"{base}/messages", send_message)
    r.add_get(f"{base}/messages/{{message_id}}", get_message)
    r.add_patch(f"{base}/messages/{{message_id}}", edit_message)
    r.add_delete(f"{base}/messages/{{message_id}}", delete_message)
    r.add_put(f"{base}/messages/{{message_id}}/reactions/{{emoji}}/@me", add_reaction)
    r.add_delete(f"{base}/messages/{{message_id}}/reactions/{{emoji}}/@me", remove_reaction)
    r.add_post(f"{base}/messages/{{message_id}}/threads", thread_from_message)
    r.add_post(f"{base}/threads", thread_without_message)
    r.add_post(f"{base}/typing", typing)
    r.add_get(f"{base}/thread-members", list_thread_members)
    r.add_put(f"{base}/thread-members/{{user_id}}", add_thread_member)
    r.add_delete(f"{base}/thread-members/{{user_id}}", remove_thread_member)
    r.add_get(f"{base}/thread-members/{{user_id}}", get_thread_member)
