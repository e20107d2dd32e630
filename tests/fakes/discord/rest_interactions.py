"""Interaction callbacks and the interaction webhooks (followups, @original and followup edits).

Discord's timing rules: the callback must come within ``ack_deadline`` (3 s) of the interaction,
once; the token then lives ``interaction_ttl`` (15 min). A followup after a thinking defer (type 5)
fills the loading message, as Discord does.
"""

from __future__ import annotations

import time

from aiohttp import web

from .limits import (
    already_acknowledged,
    check_message,
    invalid_form,
    invalid_webhook_token,
    unknown_interaction,
    unknown_message,
    unknown_webhook,
)
from .payloads import message_payload
from .records import (
    APPLICATION_COMMAND,
    EPHEMERAL,
    JSON,
    LOADING,
    MESSAGE_COMPONENT,
    FakeInteraction,
    FakeMessage,
    Upload,
)
from .rest import API, INTERACTION, Backend, backend, json_response, no_content, read_body
from .rest_channels import kept_attachments

CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 4, 5, 6, 7
CHAT_INPUT_COMMAND_MESSAGE = 20


async def callback(request: web.Request) -> web.Response:
    be = backend(request)
    state = be.state
    inter = state.interactions.get(int(request.match_info["interaction_id"]))
    if inter is None or inter.token != request.match_info["token"]:
        raise unknown_interaction()
    request[INTERACTION] = inter
    if time.monotonic() - inter.created_at > be.ack_deadline:
        raise unknown_interaction()
    if inter.acknowledged:
        raise already_acknowledged()
    body, uploads = await read_body(request)
    kind = int(body.get("type", 0))
    data: JSON = body.get("data") or {}
    message = _respond(be, inter, kind, data, uploads)
    inter.callback_type, inter.callback_data = kind, data
    state.changed()
    if request.query.get("with_response", "").lower() not in ("1", "true"):
        return no_content()
    answer: JSON = {"interaction": {
        "id": str(inter.id), "type": inter.type, "response_message_loading": kind == DEFERRED_MESSAGE,
        "response_message_ephemeral": bool(message and message.ephemeral),
    }}
    if message is not None:
        answer["interaction"]["response_message_id"] = str(message.id)
        answer["resource"] = {"type": kind, "message": message_payload(state, message)}
    return json_response(answer)


def _respond(be: Backend, inter: FakeInteraction, kind: int, data: JSON, uploads: list[Upload]) -> FakeMessage | None:
    """Carry out one callback; returns the message it created or updated."""
    state = be.state
    channel = state.channels[inter.channel_id]
    if kind == CHANNEL_MESSAGE:
        check_message(data, uploads, upload_limit=state.upload_limit, creating=True)
        msg_type = CHAT_INPUT_COMMAND_MESSAGE if inter.type == APPLICATION_COMMAND else 0
        msg = state.create_message(channel, state.bot.id, data, uploads, interaction=inter, msg_type=msg_type)
    elif kind == DEFERRED_MESSAGE:
        body = {"content": "", "flags": int(data.get("flags") or 0) & EPHEMERAL}
        msg = state.create_message(channel, state.bot.id, body, [], interaction=inter, extra_flags=LOADING,
                                   msg_type=CHAT_INPUT_COMMAND_MESSAGE if inter.type == APPLICATION_COMMAND else 0)
    elif kind in (DEFERRED_UPDATE, UPDATE_MESSAGE):
        if inter.type != MESSAGE_COMPONENT or inter.message_id is None:
            raise invalid_form("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Interaction response type is invalid")
        inter.original_id = inter.message_id
        if kind == DEFERRED_UPDATE:
            return None
        msg = state.messages[inter.message_id]
        check_message(data, uploads, upload_limit=state.upload_limit, creating=False,
                      kept_attachments=kept_attachments(msg, data))
        state.edit_message(msg, data, uploads)
    else:  # 1 pong, 8 autocomplete, 9 modal, 12 activity: nothing appears in the channel
        return None
    inter.original_id = msg.id
    if msg not in inter.responses:
        inter.responses.insert(0, msg)
    return msg


def _webhook_interaction(request: web.Request) -> FakeInteraction:
    be = backend(request)
    state = be.state
    inter = next((i for i in state.interactions.values() if i.token == request.match_info["token"]), None)
    if request.match_info["app_id"] != str(state.application_id) or inter is None:
        raise unknown_webhook()
    request[INTERACTION] = inter
    if time.monotonic() - inter.created_at > be.interaction_ttl:
        raise invalid_webhook_token()
    if not inter.acknowledged:
        raise unknown_webhook()
    return inter


def _target(request: web.Request, inter: FakeInteraction) -> FakeMessage:
    state = backend(request).state
    raw = request.match_info["message_id"]
    message_id = inter.original_id if raw == "@original" else int(raw) if raw.isdigit() else None
    msg = state.messages.get(message_id) if message_id is not None else None
    allowed = {m.id for m in inter.responses} | {inter.original_id}
    if msg is None or msg.deleted or msg.id not in allowed:
        raise unknown_message()
    return msg


async def followup(request: web.Request) -> web.Response:
    be = backend(request)
    state = be.state
    inter = _webhook_interaction(request)
    body, uploads = await read_body(request)
    channel = state.channels[inter.channel_id]
    original = inter.original
    check_message(body, uploads, upload_limit=state.upload_limit, creating=True)
    if original is not None and original.loading:
        if not original.ephemeral:
            be.limiter.take_channel_write(channel.id)
        msg = state.edit_message(original, body, uploads)
    else:
        if not int(body.get("flags") or 0) & EPHEMERAL:
            be.limiter.take_channel_write(channel.id)
        msg = state.create_message(channel, state.bot.id, body, uploads, interaction=inter)
        inter.responses.append(msg)
    if request.query.get("wait", "").lower() in ("1", "true"):
        return json_response(message_payload(state, msg))
    return no_content()


async def edit_webhook_message(request: web.Request) -> web.Response:
    be = backend(request)
    inter = _webhook_interaction(request)
    msg = _target(request, inter)
    body, uploads = await read_body(request)
    if not msg.ephemeral:
        be.limiter.take_channel_write(msg.channel_id)
    check_message(body, uploads, upload_limit=be.state.upload_limit, creating=False,
                  kept_attachments=kept_attachments(msg, body))
    be.state.edit_message(msg, body, uploads)
    if msg not in inter.responses:
        inter.responses.insert(0, msg)
    return json_response(message_payload(be.state, msg))


async def get_webhook_message(request: web.Request) -> web.Response:
    inter = _webhook_interaction(request)
    return json_response(message_payload(backend(request).state, _target(request, inter)))


async def delete_webhook_message(request: web.Request) -> web.Response:
    inter = _webhook_interaction(request)
    backend(request).state.delete_message(_target(request, inter))
    return no_content()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{API}/interactions/{{interaction_id}}/{{token}}/callback", callback)
    hook = f"{API}/webhooks/{{app_id}}/{{token}}"
    r.add_post(hook, followup)
    r.add_get(f"{hook}/messages/{{message_id}}", get_webhook_message)
    r.add_patch(f"{hook}/messages/{{message_id}}", edit_webhook_message)
    r.add_delete(f"{hook}/messages/{{message_id}}", delete_webhook_message)
