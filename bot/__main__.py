"""Command line: `python -m bot [run|console|images]`.

The only module that wires concrete parts together: settings -> store -> Docker -> VMManager ->
Ollama client -> front end, each opened with `async with` and passed in.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack
from functools import partial

import docker
import docker.errors
import ollama

from bot.agent.loop import Agent
from bot.config import Settings, load_settings
from bot.errors import BotError, ConfigError, EngineError
from bot.images import build_image, ensure_image
from bot.notify import queue_vm_notification
from bot.store import Store
from bot.vm.manager import VMManager

log = logging.getLogger("bot")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("docker", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def docker_client() -> docker.DockerClient:
    try:
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise EngineError(f"The Docker engine does not answer ({exc}). Start Docker, or set DOCKER_HOST.") from exc


async def cmd_images(settings: Settings, args: argparse.Namespace) -> None:
    client = docker_client()
    try:
        await build_image(client, settings.agent_image_dir, settings.vm_image,
                          base_image=args.base_image or settings.base_image,
                          extra_packages=args.extra_packages or settings.extra_packages)
    finally:
        client.close()
    print(f"agent image {settings.vm_image} is ready")


async def open_core(stack: AsyncExitStack, settings: Settings) -> Agent:
    """settings -> store -> Docker -> VMManager -> Ollama client -> Agent, closed by the stack."""
    store = await stack.enter_async_context(Store.open(settings.database_path))
    interrupted = await store.mark_interrupted()
    if interrupted:
        log.info("%d task(s) that were running when the bot stopped are marked interrupted", interrupted)
    client = docker_client()
    stack.callback(client.close)
    await ensure_image(client, settings.agent_image_dir, settings.vm_image, base_image=settings.base_image,
                       extra_packages=settings.extra_packages)
    vms = await stack.enter_async_context(
        VMManager(settings, client, on_notify=partial(queue_vm_notification, store)))
    ollama_client = ollama.AsyncClient(host=settings.ollama_host, timeout=settings.ollama_timeout)
    stack.push_async_callback(ollama_client.close)
    return Agent(settings, store, vms, ollama_client)


async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    from bot.client import AgentBot  # the Discord front end; `console` does without it

    if not settings.discord_token:
        raise ConfigError("DISCORD_TOKEN is not set: put the bot's token in .env (see .env.example).")
    # SIGTERM (docker stop, systemd) ends the bot like Ctrl-C does: turns are interrupted with a
    # footer that says so, the VMs keep running, everything opened here is closed.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with AsyncExitStack() as stack:
        agent = await open_core(stack, settings)
        bot = AgentBot(settings, agent.store, agent.vms, agent, agent.client)
        async with bot:
            await bot.start(settings.discord_token)


async def cmd_console(settings: Settings, args: argparse.Namespace) -> None:
    from bot.console import run_console

    async with AsyncExitStack() as stack:
        agent = await open_core(stack, settings)
        await run_console(agent, agent.store, owner_id=args.user)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the Discord bot (the default)")
    console = sub.add_parser("console", help="talk to the agent in this terminal, without Discord")
    console.add_argument("--user", type=int, default=0, help="the user id to act as (default 0)")
    images = sub.add_parser("images", help="build (or rebuild) the agent image from agent_image/")
    images.add_argument("--base-image", help="FROM image (default: BASE_IMAGE, debian:bookworm-slim)")
    images.add_argument("--extra-packages", help="Debian packages to add, space separated")
    args = parser.parse_args(argv)
    args.command = args.command or "run"
    return args


COMMANDS = {"run": cmd_run, "console": cmd_console, "images": cmd_images}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        asyncio.run(COMMANDS[args.command](settings, args))
    except BotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM: a requested stop, done cleanly
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
