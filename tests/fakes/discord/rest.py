"""The aiohttp application: auth, JSON/multipart bodies, errors and rate-limit headers as Discord
sends them, plus login, users, DMs, guild reads, application commands and the CDN."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from .commands import CommandRegistry
from .limits import (
    VIA,
    ApiError,
    RateLimiter,
    invalid_form,
    not_found,
    unauthorized,
    unknown_channel,
    unknown_member,
    unknown_user,
)
from .payloads import channel_payload, guild_payload, member_payload, role_payload, user_payload
from .records import JSON, ErrorRecord, FakeChannel, FakeInteraction, Upload
from .state import FakeState

API = "/api/v10"
WRITE_ROUTES = {
    ("POST", f"{API}/channels/{{channel_id}}/messages"),
    ("PATCH", f"{API}/channels/{{channel_id}}/messages/{{message_id}}"),
    ("POST", f"{API}/webhooks/{{app_id}}/{{token}}"),
    ("PATCH", f"{API}/webhooks/{{app_id}}/{{token}}/messages/{{message_id}}"),
}
log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Backend:
    state: FakeState
    commands: CommandRegistry
    limiter: RateLimiter
    gateway_url: str = ""
    ack_deadline: float = 3.0
    interaction_ttl: float = 900.0


BACKEND = web.AppKey("backend", Backend)
# The interaction a request is about, so errors are also recorded on it.
INTERACTION: Any = web.RequestKey("interaction", FakeInteraction) if hasattr(web, "RequestKey") else "interaction"


def backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Content-Type exactly ``application/json`` (discord.py parses nothing else)."""
    merged = {hdrs.CONTENT_TYPE: "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=merged)


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_body(request: web.Request) -> tuple[Any, list[Upload]]:
    """A JSON body, or multipart ``payload_json`` + ``files[n]`` parts (in index order)."""
    if request.content_type.startswith("multipart/"):
        body: JSON = {}
        uploads: dict[int, Upload] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.name == "payload_json":
                body = json.loads(await part.text())
            elif part.name.startswith("files[") or part.name.startswith("file"):
                index = int(part.name[6:-1]) if part.name.startswith("files[") else len(uploads)
                data = bytes(await part.read(decode=False))
                uploads[index] = Upload(part.filename or f"file{index}", data, part.headers.get(hdrs.CONTENT_TYPE))
        return body, [uploads[i] for i in sorted(uploads)]
    text = await request.text() if request.can_read_body else ""
    return (json.loads(text) if text else {}), []


def channel_or_404(state: FakeState, channel_id: str) -> FakeChannel:
    try:
        return state.channels[int(channel_id)]
    except (KeyError, ValueError):
        raise unknown_channel() from None


# -- middleware ------------------------------------------------------------------------------------


def _major(request: web.Request) -> str:
    info = request.match_info
    if "channel_id" in info:
        return info["channel_id"]
    if "guild_id" in info:
        return info["guild_id"]
    if "token" in info:
        return f"{info.get('app_id') or info.get('interaction_id')}+{info['token']}"
    return ""


@web.middleware
async def discord_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    be = backend(request)
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    bucket = hashlib.sha1(f"{request.method} {canonical}".encode()).hexdigest()[:16]
    major = _major(request)
    headers: dict[str, str] = {"Via": VIA}
    try:
        if not canonical.startswith(API):
            return await handler(request)  # gateway, CDN
        if _needs_bot_auth(canonical) and request.headers.get(hdrs.AUTHORIZATION) != f"Bot {be.state.token}":
            raise unauthorized()
        headers.update(be.limiter.take_route(bucket, major, write=(request.method, canonical) in WRITE_ROUTES))
        response = await handler(request)
        headers.update(be.limiter.headers(bucket, major))
        response.headers.update(headers)
        return response
    except ApiError as error:
        if error.status == 429 and error.headers.get("X-RateLimit-Scope") == "shared":
            be.limiter.give_back_route(bucket, major)
        return _error_response(request, error, headers)
    except web.HTTPNotFound:
        return _error_response(request, not_found(), headers)
    except json.JSONDecodeError:
        return _error_response(request, ApiError(400, 50109, "The request body contains invalid JSON."), headers)
    except Exception as exc:  # a bug in the fake, or a body it cannot read: fail fast (a 500 makes
        log.exception("fake Discord failed on %s %s", request.method, request.path)  # discord.py retry)
        return _error_response(request, ApiError(400, 0, f"fake Discord could not handle this: {exc!r}"), headers)
    finally:
        be.state.changed()


def _needs_bot_auth(canonical: str) -> bool:
    return not canonical.startswith((f"{API}/webhooks/", f"{API}/interactions/", f"{API}/gateway"))


def _error_response(request: web.Request, error: ApiError, headers: dict[str, str]) -> web.Response:
    record = ErrorRecord(request.method, request.path, error.status, error.code, error.message)
    backend(request).state.record_error(record, request.get(INTERACTION))
    return json_response(error.body(), error.status, {**headers, **error.headers})


# -- login, users, guild -----------------------------------------------------------------------------


async def get_me(request: web.Request) -> web.Response:
    user = backend(request).state.bot
    return json_response({**user_payload(user), "verified": True, "mfa_enabled": False, "locale": "en-US"})


async def get_application(request: web.Request) -> web.Response:
    state = backend(request).state
    return json_response({
        "id": str(state.application_id), "name": state.bot.name, "description": "", "icon": None,
        "bot_public": True, "bot_require_code_grant": False, "owner": user_payload(state.owner),
        "verify_key": "0" * 64, "flags": 0, "team": None, "summary": "", "rpc_origins": [],
        "bot": user_payload(state.bot), "interactions_endpoint_url": None,
    })


async def get_gateway(request: web.Request) -> web.Response:
    url = backend(request).gateway_url
    return json_response({"url": url, "shards": 1, "session_start_limit": {
        "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})


async def get_user(request: web.Request) -> web.Response:
    state = backend(request).state
    user = state.users.get(int(request.match_info["user_id"]))
    if user is None:
        raise unknown_user()
    return json_response(user_payload(user))


async def create_dm(request: web.Request) -> web.Response:
    state = backend(request).state
    body, _ = await read_body(request)
    user_id = int(body.get("recipient_id", 0))
    if user_id not in state.users:
        raise unknown_user()
    return json_response(channel_payload(state, state.dm_channel(user_id)))


async def get_guild(request: web.Request) -> web.Response:
    state = _guild_state(request)
    data = guild_payload(state)
    for key in ("members", "channels", "threads", "presences", "voice_states"):
        data.pop(key)
    return json_response(data)


async def get_guild_channels(request: web.Request) -> web.Response:
    state = _guild_state(request)
    channels = [c for c in state.channels.values() if c.guild_id == state.guild.id and not c.is_thread]
    return json_response([channel_payload(state, c) for c in channels])


async def get_guild_roles(request: web.Request) -> web.Response:
    state = _guild_state(request)
    return json_response([role_payload(r) for r in state.roles.values()])


async def get_member(request: web.Request) -> web.Response:
    state = _guild_state(request)
    user = state.users.get(int(request.match_info["user_id"]))
    if user is None or user.id not in state.member_roles:
        raise unknown_member()
    return json_response(member_payload(state, user))


def _guild_state(request: web.Request) -> FakeState:
    state = backend(request).state
    if request.match_info["guild_id"] != str(state.guild.id):
        raise ApiError(404, 10004, "Unknown Guild")
    return state


# -- application commands ------------------------------------------------------------------------------


def _command_scope(request: web.Request) -> tuple[Backend, int | None]:
    be = backend(request)
    if request.match_info["app_id"] != str(be.state.application_id):
        raise ApiError(403, 50001, "Missing Access")
    guild_id = request.match_info.get("guild_id")
    if guild_id is not None:
        _guild_state(request)
    return be, None if guild_id is None else int(guild_id)


async def put_commands(request: web.Request) -> web.Response:
    be, guild_id = _command_scope(request)
    body, _ = await read_body(request)
    if not isinstance(body, list):
        raise invalid_form("", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
    return json_response(be.commands.overwrite(guild_id, body))


async def get_commands(request: web.Request) -> web.Response:
    be, guild_id = _command_scope(request)
    return json_response(be.commands.all(guild_id))


async def get_command(request: web.Request) -> web.Response:
    be, guild_id = _command_scope(request)
    command = be.commands.get(guild_id, int(request.match_info["command_id"]))
    if command is None:
        raise ApiError(404, 10063, "Unknown application command")
    return json_response(command)


# -- CDN ---------------------------------------------------------------------------------------------


async def cdn_file(request: web.Request) -> web.Response:
    state = backend(request).state
    att = state.cdn.get(int(request.match_info["att_id"]))
    if att is None or att.filename != request.match_info["filename"]:
        return web.Response(status=404, text="Not Found")
    return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{API}/users/@me", get_me)
    r.add_get(f"{API}/oauth2/applications/@me", get_application)
    r.add_get(f"{API}/applications/@me", get_application)
    r.add_get(f"{API}/gateway", get_gateway)
    r.add_get(f"{API}/gateway/bot", get_gateway)
    r.add_post(f"{API}/users/@me/channels", create_dm)
    r.add_get(f"{API}/users/{{user_id:\\d+}}", get_user)
    r.add_get(f"{API}/guilds/{{guild_id}}", get_guild)
    r.add_get(f"{API}/guilds/{{guild_id}}/channels", get_guild_channels)
    r.add_get(f"{API}/guilds/{{guild_id}}/roles", get_guild_roles)
    r.add_get(f"{API}/guilds/{{guild_id}}/members/{{user_id}}", get_member)
    for prefix in (f"{API}/applications/{{app_id}}", f"{API}/applications/{{app_id}}/guilds/{{guild_id}}"):
        r.add_put(f"{prefix}/commands", put_commands)
        r.add_get(f"{prefix}/commands", get_commands)
        r.add_get(f"{prefix}/commands/{{command_id}}", get_command)
    r.add_get("/attachments/{channel_id}/{att_id}/{filename}", cdn_file)
    r.add_get("/ephemeral-attachments/{app_id}/{att_id}/{filename}", cdn_file)
