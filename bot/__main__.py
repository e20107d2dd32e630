"""Command line: `python -m bot [run|console|images]`.

The only module that wires concrete parts together: settings -> store -> Docker -> VMManager ->
Ollama client -> front end, each opened with `async with` and passed in.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import docker
import docker.errors

from bot.config import Settings, load_settings
from bot.errors import BotError, EngineError
from bot.images import build_image

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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    images = sub.add_parser("images", help="build (or rebuild) the agent image from agent_image/")
    images.add_argument("--base-image", help="FROM image (default: BASE_IMAGE, debian:bookworm-slim)")
    images.add_argument("--extra-packages", help="Debian packages to add, space separated")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(2)
    return args


COMMANDS = {"images": cmd_images}


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
