"""FakeDiscord: a local Discord (REST + gateway over real sockets) for the unmodified discord.py client,
and the test API that plays the users and inspects what the bot did.

    async with FakeDiscord(guild_name="Test Guild") as fake:
        with fake.patched():                 # Route.BASE and DEFAULT_GATEWAY point here
            async with fake.running(bot):    # bot.start(fake.token), waits for on_ready, closes
                inter = await fake.run_command("task", fake.add_user("alice"), fake.channel("general"), {...})
                await fake.wait_for(lambda: inter.responses)
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Self, TypeVar

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from . import rest, rest_channels, rest_interactions
from .commands import CommandRegistry, check_permission, command_data, interaction_payload
from .gateway import GatewayHub
from .limits import DEFAULT_UPLOAD_LIMIT, RateLimiter
from .records import (
    APPLICATION_COMMAND,
    JSON,
    MESSAGE_COMPONENT,
    ErrorRecord,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeRole,
    FakeUser,
    Upload,
)
from .state import FakeState

T = TypeVar("T")
FileSpec = tuple[str, bytes] | Upload


def _upload(spec: FileSpec) -> Upload:
    return spec if isinstance(spec, Upload) else Upload(spec[0], spec[1])


class FakeDiscord:
    def __init__(self, *, guild_name: str = "Test Guild", bot_name: str = "AgentBot",
                 channels: Sequence[str] = ("general",), upload_limit: int = DEFAULT_UPLOAD_LIMIT,
                 ack_deadline: float = 3.0, interaction_ttl: float = 900.0, write_limit: int = 5,
                 write_period: float = 5.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = FakeState(guild_name=guild_name, bot_name=bot_name, channel_names=tuple(channels),
                               upload_limit=upload_limit)
        self.limiter = RateLimiter(write_limit=write_limit, write_period=write_period)
        self.backend = rest.Backend(self.state, CommandRegistry(self.state), self.limiter,
                                    ack_deadline=ack_deadline, interaction_ttl=interaction_ttl)
        self.gateway = GatewayHub(self.state)
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.state.on_change = self._changed.set
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application(middlewares=[rest.discord_middleware], client_max_size=256 * 1024 * 1024)
        app[rest.BACKEND] = self.backend
        rest.add_routes(app)
        rest_channels.add_routes(app)
        rest_interactions.add_routes(app)
        app.router.add_get("/gateway", self.gateway.handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.state.base_url = self.url
        self.backend.gateway_url = self.gateway.resume_url = self.gateway_url
        return self

    async def close(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def gateway_url(self) -> str:
        return f"{self.url.replace('http://', 'ws://')}/gateway"

    def patch_discord(self) -> Callable[[], None]:
        """Point discord.py's REST base and gateway here; returns the undo."""
        route, ws = discord.http.Route, discord.gateway.DiscordWebSocket
        old = (route.BASE, ws.DEFAULT_GATEWAY)
        route.BASE = f"{self.url}{rest.API}"
        ws.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

        def undo() -> None:
            route.BASE, ws.DEFAULT_GATEWAY = old

        return undo

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """``patch_discord`` as a context manager."""
        undo = self.patch_discord()
        try:
            yield
        finally:
            undo()

    @contextlib.asynccontextmanager
    async def running(self, client: discord.Client, timeout: float = 5.0) -> AsyncIterator[discord.Client]:
        """Start ``client`` with the fake's token, wait for on_ready, close it on exit."""
        runner = asyncio.create_task(client.start(self.token))
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({runner, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await client.close()
            if runner.done():
                runner.result()  # the login or connection error
            runner.cancel()
            raise TimeoutError(f"the client was not ready within {timeout} s")
        try:
            yield client
        finally:
            await client.close()
            await runner

    # -- who and where -----------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def bot_user(self) -> FakeUser:
        return self.state.bot

    @property
    def owner(self) -> FakeUser:
        """The guild (and application) owner: has every permission."""
        return self.state.owner

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def guild(self) -> FakeGuild:
        return self.state.guild

    @property
    def rate_limited_count(self) -> int:
        """How many 429 answers the fake gave."""
        return self.limiter.count

    @property
    def errors(self) -> list[ErrorRecord]:
        """Every error (4xx) the fake answered, oldest first."""
        return list(self.state.errors)

    def add_user(self, name: str, *, roles: Iterable[FakeRole] = (), bot: bool = False) -> FakeUser:
        return self.state.add_user(name, [r.id for r in roles], bot=bot)

    def set_roles(self, user: FakeUser, roles: Iterable[FakeRole]) -> None:
        self.state.set_roles(user, [r.id for r in roles])

    def add_role(self, name: str, *, permissions: int = 0) -> FakeRole:
        return self.state.add_role(name, permissions)

    def add_channel(self, name: str, *, topic: str | None = None) -> FakeChannel:
        return self.state.add_channel(name, topic=topic)

    def channel(self, name: str) -> FakeChannel:
        """A guild channel or thread by name."""
        found = [c for c in self.state.channels.values() if c.name == name and c.guild_id is not None]
        if not found:
            raise LookupError(f"no channel named {name!r}")
        return found[-1]

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        return self.state.dm_channel(user.id)

    def close_dms(self, user: FakeUser) -> None:
        """From now on the bot's DMs to this user fail with 403 50007."""
        self.state.closed_dms.add(user.id)

    def open_dms(self, user: FakeUser) -> None:
        self.state.closed_dms.discard(user.id)

    # -- what happened -----------------------------------------------------------------------------

    def messages(self, channel: FakeChannel, *, include_ephemeral: bool = False,
                 include_deleted: bool = False) -> list[FakeMessage]:
        """Messages in a channel, thread or DM, oldest first."""
        return [m for m in self.state.channel_messages.get(channel.id, [])
                if (include_ephemeral or not m.ephemeral) and (include_deleted or not m.deleted)]

    def dm_messages(self, user: FakeUser) -> list[FakeMessage]:
        return self.messages(self.dm_channel(user))

    def threads(self, channel: FakeChannel) -> list[FakeChannel]:
        return [c for c in self.state.channels.values() if c.is_thread and c.parent_id == channel.id]

    def thread_members(self, thread: FakeChannel) -> list[FakeUser]:
        return [self.state.users[u] for u in thread.member_ids]

    def commands(self, *, guild: bool = False) -> list[JSON]:
        """The registered global commands, or the guild's with ``guild=True``."""
        return self.backend.commands.all(self.state.guild.id if guild else None)

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every change and every 50 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s; last errors: {self.errors[-3:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass

    async def reconnect_gateway(self) -> None:
        """Send op 7 RECONNECT: discord.py reconnects and RESUMEs (missed events are replayed)."""
        self.gateway.reconnect()
        await self.gateway.flush()

    # -- acting as users ---------------------------------------------------------------------------

    async def post_message(self, user: FakeUser, channel: FakeChannel, content: str = "", *,
                           files: Sequence[FileSpec] = (), reply_to: FakeMessage | None = None) -> FakeMessage:
        """``user`` writes in a channel or thread (MESSAGE_CREATE reaches the bot)."""
        if not self.state.can_see(user.id, channel):
            raise PermissionError(f"{user.name} cannot see {channel.name!r} (private thread, not a member)")
        body: JSON = {"content": content}
        if reply_to is not None:
            body["message_reference"] = {"message_id": str(reply_to.id), "channel_id": str(reply_to.channel_id)}
        msg = self.state.create_message(channel, user.id, body, [_upload(f) for f in files])
        await self.gateway.flush()
        return msg

    async def send_dm(self, user: FakeUser, content: str = "", *, files: Sequence[FileSpec] = ()) -> FakeMessage:
        """``user`` DMs the bot (MESSAGE_CREATE without guild_id)."""
        return await self.post_message(user, self.dm_channel(user), content, files=files)

    async def run_command(self, name: str, user: FakeUser, channel: FakeChannel | None = None,
                          options: dict[str, Any] | None = None, *,
                          attachment: FileSpec | None = None) -> FakeInteraction:
        """``user`` runs ``/name`` ("group sub" for subcommands) in ``channel`` (None: in a DM).

        Options are typed by the registered schema: str/int/float/bool, FakeUser, FakeRole,
        FakeChannel, or (filename, bytes) for attachments; ``attachment`` fills the first attachment option.
        """
        channel = channel or self.dm_channel(user)
        top, *path = name.split()
        command = self.backend.commands.find(top, channel.guild_id)
        if channel.guild_id is not None:
            check_permission(self.state, command, user)
        given = dict(options or {})
        if attachment is not None:
            given.setdefault(_first_attachment_option(command, path), attachment)
        data = command_data(self.state, command, path, given, user)
        inter = self._new_interaction(APPLICATION_COMMAND, user, channel, name=name)
        inter.options = data["options"]
        return await self._send_interaction(inter, data)

    async def click_button(self, user: FakeUser, message: FakeMessage, custom_id: str) -> FakeInteraction:
        """``user`` presses the button ``custom_id`` on ``message`` (component interaction, type 3)."""
        button = message.button(custom_id)
        if button is None or message.deleted:
            raise LookupError(f"message {message.id} has no button {custom_id!r}: {message.buttons()}")
        if button.get("disabled"):
            raise PermissionError(f"button {custom_id!r} is disabled")
        owner = self.state.interactions[message.interaction_id].user_id if message.interaction_id else None
        if message.ephemeral and owner not in (None, user.id):
            raise PermissionError("an ephemeral message is visible only to its interaction's user")
        channel = self.state.channels[message.channel_id]
        inter = self._new_interaction(MESSAGE_COMPONENT, user, channel, custom_id=custom_id)
        inter.message_id = message.id
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._send_interaction(inter, data, message)

    def _new_interaction(self, kind: int, user: FakeUser, channel: FakeChannel, **fields: Any) -> FakeInteraction:
        if not self.gateway.connected:
            raise RuntimeError("no bot is connected to the fake gateway")
        if not self.state.can_see(user.id, channel):
            raise PermissionError(f"{user.name} cannot see {channel.name!r}")
        inter = FakeInteraction(
            id=self.state.ids.next(), token=f"aW50ZXJhY3Rpb24.{secrets.token_urlsafe(48)}", type=kind,
            user_id=user.id, channel_id=channel.id, guild_id=channel.guild_id, created_at=time.monotonic(), **fields,
        )
        self.state.interactions[inter.id] = inter
        return inter

    async def _send_interaction(self, inter: FakeInteraction, data: JSON,
                                message: FakeMessage | None = None) -> FakeInteraction:
        payload = interaction_payload(self.state, inter, data, message)
        inter.created_at = time.monotonic()
        self.state.dispatch("INTERACTION_CREATE", payload)
        await self.gateway.flush()
        return inter


def _first_attachment_option(command: JSON, path: list[str]) -> str:
    schema = command.get("options") or []
    for part in path:
        schema = next(o for o in schema if o["name"] == part).get("options") or []
    for option in schema:
        if option.get("type") == 11:
            return str(option["name"])
    raise LookupError(f"/{command['name']} has no attachment option")
