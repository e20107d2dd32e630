"""The Discord double, checked with a real discord.py 2.7 `commands.Bot` over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord.ext import commands

from tests.fakes.discord import FakeDiscord, FakeUser


def make_bot(*, message_content: bool = True, **options: Any) -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = message_content
    return commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05, **options)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guild_name="Test Guild") as server:
        with server.patched():
            yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[commands.Bot]:
    started = make_bot()
    async with fake.running(started):
        yield started


@pytest.fixture
def alice(fake: FakeDiscord) -> FakeUser:
    return fake.add_user("alice")


def guild_of(fake: FakeDiscord) -> discord.Object:
    return discord.Object(id=fake.guild.id)


def text_channel(bot: commands.Bot, fake: FakeDiscord, name: str = "general") -> discord.TextChannel:
    channel = bot.get_channel(fake.channel(name).id)
    assert isinstance(channel, discord.TextChannel)
    return channel


def collect(bot: commands.Bot, event: str) -> list[Any]:
    seen: list[Any] = []

    async def listener(*args: Any) -> None:
        seen.append(args[0] if len(args) == 1 else args)

    bot.add_listener(listener, f"on_{event}")
    return seen


# -- login and gateway ------------------------------------------------------------------------------


async def test_login_and_ready_cache_the_guild(fake: FakeDiscord) -> None:
    fake.add_channel("tasks", topic="agent work")
    bot = make_bot()
    readies = collect(bot, "ready")
    async with fake.running(bot):
        assert bot.user is not None and bot.user.id == fake.bot_user.id and bot.user.bot
        assert bot.application_id == fake.application_id
        guild = bot.get_guild(fake.guild.id)
        assert guild is not None and guild.name == "Test Guild"
        assert sorted(c.name for c in guild.text_channels) == ["general", "tasks"]
        assert guild.get_member(fake.bot_user.id) is not None
        assert (await bot.application_info()).owner.id == fake.owner.id
    assert len(readies) == 1


async def test_wrong_token_is_refused(fake: FakeDiscord) -> None:
    bot = make_bot()
    with pytest.raises(discord.LoginFailure):
        await bot.login("not-the-token")
    await bot.close()
    assert fake.errors[-1].status == 401


async def test_resume_replays_events_missed_while_reconnecting(fake: FakeDiscord, bot: commands.Bot,
                                                               alice: FakeUser) -> None:
    seen = collect(bot, "message")
    resumed = collect(bot, "resumed")
    await fake.reconnect_gateway()
    await fake.post_message(alice, fake.channel("general"), "while you were away")
    await fake.wait_for(lambda: resumed and seen)
    assert [m.content for m in seen] == ["while you were away"]
    assert fake.gateway.resumes == 1 and fake.gateway.identifies == 1


async def test_without_message_content_intent_guild_content_is_hidden(fake: FakeDiscord, alice: FakeUser) -> None:
    bot = make_bot(message_content=False)
    seen = collect(bot, "message")
    async with fake.running(bot):
        await fake.post_message(alice, fake.channel("general"), "secret plans")
        await fake.post_message(alice, fake.channel("general"), f"{fake.bot_user.mention} hello")
        await fake.send_dm(alice, "dm text")
        await fake.wait_for(lambda: len(seen) == 3)
    assert [m.content for m in seen] == ["", f"<@{fake.bot_user.id}> hello", "dm text"]


async def test_members_intent_startup_chunking_is_answered(fake: FakeDiscord, alice: FakeUser) -> None:
    intents = discord.Intents.default()
    intents.members = True
    bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
    async with fake.running(bot):  # on_ready waits for the op 8 chunk (5 s if unanswered)
        guild = bot.get_guild(fake.guild.id)
        assert guild is not None and guild.chunked
        assert {m.name for m in guild.members} == {"AgentBot", "owner", "alice"}


# -- slash commands and interactions -------------------------------------------------------------------


async def test_slash_command_with_string_option_and_attachment(fake: FakeDiscord, bot: commands.Bot,
                                                               alice: FakeUser) -> None:
    received: dict[str, Any] = {}

    @bot.tree.command(name="task", description="Start a task", guild=guild_of(fake))
    async def task(interaction: discord.Interaction, prompt: str, steps: int = 5, dry: bool = False,
                   file: discord.Attachment | None = None) -> None:
        received.update(prompt=prompt, steps=steps, dry=dry, user=interaction.user.id)
        if file is not None:
            received["name"], received["data"] = file.filename, await file.read()
            async with aiohttp.ClientSession() as session, session.get(file.url) as resp:
                received["plain_get"] = await resp.read()
        await interaction.response.send_message(f"Task started: {prompt}")

    with pytest.raises(LookupError):  # not synced yet: a user would not see the command
        await fake.run_command("task", alice, fake.channel("general"), {"prompt": "x"})
    synced = await bot.tree.sync(guild=guild_of(fake))
    assert [c.name for c in synced] == ["task"] and synced[0].id
    assert [o["name"] for o in fake.commands(guild=True)[0]["options"]] == ["prompt", "steps", "dry", "file"]

    inter = await fake.run_command("task", alice, fake.channel("general"), {"prompt": "build it", "steps": 3,
                                   "dry": True}, attachment=("notes.txt", b"remember the milk"))
    await fake.wait_for(lambda: inter.responses)
    assert received == {"prompt": "build it", "steps": 3, "dry": True, "user": alice.id, "name": "notes.txt",
                        "data": b"remember the milk", "plain_get": b"remember the milk"}
    assert inter.callback_type == 4 and inter.responses[0].content == "Task started: build it"
    assert fake.messages(fake.channel("general"))[-1].interaction_id == inter.id


async def test_defer_then_followups_and_edit_original(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    fetched: list[str] = []

    @bot.tree.command(name="status", description="Show status", guild=guild_of(fake))
    async def status(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("working…")  # fills the "thinking" message
        second = await interaction.followup.send("second message", wait=True)
        third = await interaction.followup.send("third, soon deleted", wait=True)
        await second.edit(content="second message (edited)")  # PATCH .../messages/{id}
        await third.delete()
        await interaction.edit_original_response(content="done")
        fetched.append((await interaction.original_response()).content)  # GET .../@original

    await bot.tree.sync(guild=guild_of(fake))
    inter = await fake.run_command("status", alice, fake.channel("general"))
    await fake.wait_for(lambda: fetched)
    original = inter.original
    assert inter.callback_type == 5 and original is not None and not original.loading
    assert [v.content for v in original.versions] == ["", "working…", "done"] and fetched == ["done"]
    assert [m.content for m in inter.followups] == ["second message (edited)", "third, soon deleted"]
    assert inter.followups[1].deleted
    assert [m.content for m in fake.messages(fake.channel("general"))] == ["done", "second message (edited)"]


async def test_global_command_in_a_dm_and_an_expired_token() -> None:
    async with FakeDiscord(interaction_ttl=1.0) as fake, contextlib.AsyncExitStack() as stack:
        stack.enter_context(fake.patched())
        caught: list[discord.HTTPException] = []
        bot = make_bot()

        @bot.tree.command(name="notes", description="Your notes")
        async def notes(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.defer(ephemeral=True)
            await interaction.followup.send(f"saved {text} for {interaction.user.name}")
            await asyncio.sleep(1.1)
            try:
                await interaction.followup.send("too late")
            except discord.HTTPException as exc:
                caught.append(exc)

        async with fake.running(bot):
            await bot.tree.sync()
            assert [c["name"] for c in fake.commands()] == ["notes"]
            user = fake.add_user("dora")
            inter = await fake.run_command("notes", user, None, {"text": "milk"})
            await fake.wait_for(lambda: caught, timeout=4)
    assert inter.guild_id is None and inter.original is not None and inter.original.ephemeral
    assert inter.original.content == "saved milk for dora"
    assert caught[0].status == 401 and caught[0].code == 50027


async def test_ephemeral_reply_is_flagged_and_not_in_the_channel(fake: FakeDiscord, bot: commands.Bot,
                                                                 alice: FakeUser) -> None:
    @bot.tree.command(name="vnc", description="Desktop link", guild=guild_of(fake))
    async def vnc(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("your link", ephemeral=True)

    await bot.tree.sync(guild=guild_of(fake))
    inter = await fake.run_command("vnc", alice, fake.channel("general"))
    await fake.wait_for(lambda: inter.responses)
    reply = inter.responses[0]
    assert reply.ephemeral and reply.flags & 64 and reply.content == "your link"
    assert fake.messages(fake.channel("general")) == []
    assert fake.messages(fake.channel("general"), include_ephemeral=True) == [reply]


async def test_interaction_replies_with_files(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    @bot.tree.command(name="download", description="Get a file", guild=guild_of(fake))
    async def download(interaction: discord.Interaction, path: str) -> None:
        await interaction.response.send_message(f"{path} · 5 B", file=discord.File(io.BytesIO(b"hello"), path))
        await interaction.followup.send("and a zip", file=discord.File(io.BytesIO(b"PK\x03\x04"), "résumé.zip"))
        await interaction.edit_original_response(attachments=[])

    await bot.tree.sync(guild=guild_of(fake))
    inter = await fake.run_command("download", alice, fake.channel("general"), {"path": "app.py"})
    await fake.wait_for(lambda: inter.original and inter.original.edits)
    original, zipped = inter.responses
    assert [(a.filename, a.data) for a in original.versions[0].attachments] == [("app.py", b"hello")]
    assert original.attachments == [] and original.content == "app.py · 5 B"
    assert [(a.filename, a.data, a.content_type) for a in zipped.attachments] == [
        ("résumé.zip", b"PK\x03\x04", "application/zip")]


async def test_callback_after_three_seconds_is_unknown_interaction(fake: FakeDiscord, bot: commands.Bot,
                                                                   alice: FakeUser) -> None:
    caught: list[discord.HTTPException] = []

    @bot.tree.command(name="slow", description="Too slow", guild=guild_of(fake))
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(3.1)
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as exc:
            caught.append(exc)

    await bot.tree.sync(guild=guild_of(fake))
    inter = await fake.run_command("slow", alice, fake.channel("general"))
    await fake.wait_for(lambda: caught, timeout=6)
    assert caught[0].code == 10062 and caught[0].status == 404
    assert not inter.acknowledged and [e.code for e in inter.errors] == [10062]


async def test_second_callback_is_already_acknowledged(fake: FakeDiscord, bot: commands.Bot,
                                                        alice: FakeUser) -> None:
    @bot.tree.command(name="ping", description="Pong", guild=guild_of(fake))
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    await bot.tree.sync(guild=guild_of(fake))
    inter = await fake.run_command("ping", alice, fake.channel("general"))
    await fake.wait_for(lambda: inter.acknowledged)
    url = f"{fake.url}/api/v10/interactions/{inter.id}/{inter.token}/callback"
    body = {"type": 4, "data": {"content": "x"}}
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["code"] == 40060
    assert [m.content for m in inter.responses] == ["pong"]


async def test_button_click_reaches_a_persistent_view(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    clicks: list[int] = []

    class CancelView(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="Cancel", style=discord.ButtonStyle.danger, custom_id="task:cancel")
        async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            clicks.append(interaction.user.id)
            await interaction.response.edit_message(content="cancelled", view=None)

    bot.add_view(CancelView())
    sent = await text_channel(bot, fake).send("Task #1 running", view=CancelView())
    message = fake.messages(fake.channel("general"))[-1]
    assert message.id == sent.id and [b["label"] for b in message.buttons()] == ["Cancel"]

    inter = await fake.click_button(alice, message, "task:cancel")
    await fake.wait_for(lambda: message.content == "cancelled")
    assert clicks == [alice.id] and inter.callback_type == 7
    assert message.components == [] and [v.content for v in message.versions] == ["Task #1 running", "cancelled"]
    with pytest.raises(LookupError):
        await fake.click_button(alice, message, "task:cancel")


async def test_component_defer_then_edit_original_updates_that_message(fake: FakeDiscord, bot: commands.Bot,
                                                                       alice: FakeUser) -> None:
    class RefreshView(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="Refresh", custom_id="status:refresh")
        async def refresh(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            await interaction.response.defer()  # type 6 for a component
            await interaction.edit_original_response(content="VM: running · 212 MB")

    bot.add_view(RefreshView())
    await text_channel(bot, fake).send("VM: starting", view=RefreshView())
    message = fake.messages(fake.channel("general"))[-1]
    inter = await fake.click_button(alice, message, "status:refresh")
    await fake.wait_for(lambda: message.content == "VM: running · 212 MB")
    assert inter.callback_type == 6 and inter.original is message and message.button("status:refresh")


# -- messages, limits and rate limits ------------------------------------------------------------------------


async def test_send_with_files_embed_and_mentions_disabled(fake: FakeDiscord, alice: FakeUser) -> None:
    quiet = make_bot(allowed_mentions=discord.AllowedMentions.none())
    async with fake.running(quiet):
        embed = discord.Embed(title="Task #1", description="running")
        files = [discord.File(io.BytesIO(b"print(1)\n"), "app.py"), discord.File(io.BytesIO(b"x" * 10), "b.bin")]
        await text_channel(quiet, fake).send(f"hi {alice.mention}", embed=embed, files=files)
        await text_channel(quiet, fake).send(f"ping {alice.mention}",
                                             allowed_mentions=discord.AllowedMentions(users=True))
    first, second = fake.messages(fake.channel("general"))
    assert [(a.filename, a.data) for a in first.attachments] == [("app.py", b"print(1)\n"), ("b.bin", b"x" * 10)]
    assert first.embeds[0]["title"] == "Task #1" and first.author_id == fake.bot_user.id
    assert first.allowed_mentions == {"parse": []} and first.mentions == []
    assert second.mentions == [alice.id]
    async with aiohttp.ClientSession() as session, session.get(first.attachments[0].url) as resp:
        assert await resp.read() == b"print(1)\n"


async def test_content_over_2000_chars_is_refused(fake: FakeDiscord, bot: commands.Bot) -> None:
    with pytest.raises(discord.HTTPException) as info:
        await text_channel(bot, fake).send("x" * 2500)
    assert info.value.status == 400 and info.value.code == 50035
    assert "content" in info.value.text and fake.messages(fake.channel("general")) == []


async def test_embed_description_over_4096_is_refused(fake: FakeDiscord, bot: commands.Bot) -> None:
    with pytest.raises(discord.HTTPException) as info:
        await text_channel(bot, fake).send(embed=discord.Embed(description="d" * 4097))
    assert info.value.code == 50035 and "embeds.0.description" in info.value.text


async def test_fetch_history_typing_reply_and_delete(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    channel = text_channel(bot, fake)
    question = await fake.post_message(alice, fake.channel("general"), "anyone there?")
    async with channel.typing():
        pass
    fetched = await channel.fetch_message(question.id)
    reply = await fetched.reply("yes", mention_author=False)
    doomed = await channel.send("oops")
    await doomed.delete()
    history = [m.content async for m in channel.history(limit=10)]
    assert history == ["yes", "anyone there?"] and fake.channel("general").typing_count == 1
    stored = fake.messages(fake.channel("general"))[-1]
    assert stored.id == reply.id and stored.reference is not None and stored.mentions == []
    assert [m.content for m in fake.messages(fake.channel("general"), include_deleted=True)][-1] == "oops"
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(doomed.id)


async def test_eleven_files_are_refused(fake: FakeDiscord, bot: commands.Bot) -> None:
    files = [discord.File(io.BytesIO(b"data"), f"f{i}.txt") for i in range(11)]
    with pytest.raises(discord.HTTPException) as info:
        await text_channel(bot, fake).send(files=files)
    assert info.value.status == 400 and info.value.code == 30015
    assert fake.messages(fake.channel("general")) == []


async def test_file_over_the_upload_limit_is_refused(fake: FakeDiscord, bot: commands.Bot) -> None:
    big = discord.File(io.BytesIO(b"\0" * (10 * 1024 * 1024 + 1)), "big.bin")
    with pytest.raises(discord.HTTPException) as info:
        await text_channel(bot, fake).send(file=big)
    assert info.value.status == 413 and info.value.code == 40005


async def test_rapid_edits_are_rate_limited_then_all_land(fake: FakeDiscord, bot: commands.Bot) -> None:
    message = await text_channel(bot, fake).send("step 0")
    for step in range(1, 11):
        message = await message.edit(content=f"step {step}")
    stored = fake.messages(fake.channel("general"))[0]
    assert stored.content == "step 10" and [v.content for v in stored.edits] == [f"step {i}" for i in range(1, 11)]
    assert fake.rate_limited_count >= 1  # the channel's shared write budget: discord.py waited and retried
    assert all(e.status == 429 for e in fake.errors)


async def test_nonce_with_enforce_nonce_is_deduplicated(fake: FakeDiscord, bot: commands.Bot) -> None:
    channel = text_channel(bot, fake)
    first = await channel.send("only once", nonce=4242)
    again = await channel.send("only once", nonce=4242)
    other = await channel.send("another", nonce=4343)
    assert first.id == again.id != other.id
    assert [m.content for m in fake.messages(fake.channel("general"))] == ["only once", "another"]


# -- threads and DMs ------------------------------------------------------------------------------------------------


async def test_thread_from_a_channel_and_messages_inside(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    created = collect(bot, "thread_create")
    seen = collect(bot, "message")
    thread = await text_channel(bot, fake).create_thread(name="Task #1", type=discord.ChannelType.public_thread)
    await fake.wait_for(lambda: created)
    assert created[0].id == thread.id and bot.get_channel(thread.id) is not None
    fake_thread = fake.threads(fake.channel("general"))[0]
    assert fake_thread.type == 11 and fake_thread.name == "Task #1"

    await fake.post_message(alice, fake_thread, "add a /health route")
    await fake.wait_for(lambda: seen)
    assert isinstance(seen[0].channel, discord.Thread) and seen[0].channel.parent_id == fake.channel("general").id
    await seen[0].channel.send("on it")
    assert [m.content for m in fake.messages(fake_thread)] == ["add a /health route", "on it"]
    assert fake_thread.message_count == 2 and alice in fake.thread_members(fake_thread)


async def test_private_thread_needs_membership(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    bob = fake.add_user("bob")
    general = text_channel(bot, fake)
    starter = await general.send("Task #2")
    public = await starter.create_thread(name="from a message")
    private = await general.create_thread(name="Task #2", type=discord.ChannelType.private_thread)
    await private.add_user(discord.Object(id=alice.id))
    fake_private = next(t for t in fake.threads(fake.channel("general")) if t.id == private.id)
    assert public.id == starter.id and fake_private.type == 12
    assert [u.name for u in fake.thread_members(fake_private)] == ["AgentBot", "alice"]
    await fake.post_message(alice, fake_private, "mine")
    with pytest.raises(PermissionError):
        await fake.post_message(bob, fake_private, "let me in")


async def test_dm_from_a_user_and_the_reply(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    seen = collect(bot, "message")
    await fake.send_dm(alice, "hello bot")
    await fake.wait_for(lambda: seen)
    message = seen[0]
    assert message.guild is None and isinstance(message.channel, discord.DMChannel)
    assert message.content == "hello bot" and message.author.id == alice.id
    await message.channel.send("hello alice")
    user = await bot.fetch_user(alice.id)
    await user.send("🔔 Task #41: tests passed")
    assert [m.content for m in fake.dm_messages(alice)] == ["hello bot", "hello alice", "🔔 Task #41: tests passed"]


async def test_closed_dms_raise_forbidden_50007(fake: FakeDiscord, bot: commands.Bot, alice: FakeUser) -> None:
    fake.close_dms(alice)
    user = await bot.fetch_user(alice.id)
    with pytest.raises(discord.Forbidden) as info:
        await user.send("notification")
    assert info.value.code == 50007 and fake.dm_messages(alice) == []
