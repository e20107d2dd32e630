"""The agent image: built from agent_image/ with the docker SDK, tagged with a hash of its context.

The hash label lets the bot tell an image built from older agent_image/ files: it then warns and
`python -m bot images` rebuilds. A missing image is built on first use (it takes a minute or two).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import docker
import docker.errors

from bot.errors import ImageError

log = logging.getLogger(__name__)

CONTEXT_HASH_LABEL = "agentbot.context-hash"


def context_hash(context_dir: Path) -> str:
    """A hash of every file under the build context (names, modes and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context_dir)).encode())
        digest.update(oct(path.stat().st_mode & 0o777).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _build(client: docker.DockerClient, context_dir: Path, tag: str, base_image: str,
           extra_packages: str) -> None:
    if not (context_dir / "Dockerfile").is_file():
        raise ImageError(f"No Dockerfile in {context_dir}: set AGENT_IMAGE_DIR to the agent_image folder.")
    wanted = context_hash(context_dir)
    try:
        client.images.build(
            path=str(context_dir), tag=tag, rm=True, pull=False,
            buildargs={"BASE_IMAGE": base_image, "EXTRA_PACKAGES": extra_packages},
            labels={CONTEXT_HASH_LABEL: wanted},
        )
    except docker.errors.BuildError as exc:
        tail = "".join(str(step.get("stream", step.get("error", ""))) for step in list(exc.build_log)[-8:])
        raise ImageError(f"Building the agent image {tag} failed: {exc.msg}\n{tail.strip()}") from exc
    except docker.errors.DockerException as exc:
        raise ImageError(f"Building the agent image {tag} failed: {exc}") from exc


def _image_hash(client: docker.DockerClient, tag: str) -> str | None:
    """The context hash label of the image, '' when unlabelled, None when the image is missing."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise ImageError(f"Could not inspect the agent image {tag}: {exc}") from exc
    return (image.labels or {}).get(CONTEXT_HASH_LABEL, "")


async def build_image(client: docker.DockerClient, context_dir: Path, tag: str, *, base_image: str,
                      extra_packages: str = "") -> None:
    """Build (or rebuild; cached layers make an unchanged context fast) the agent image."""
    log.info("building the agent image %s from %s (base %s)", tag, context_dir, base_image)
    await asyncio.to_thread(_build, client, context_dir, tag, base_image, extra_packages)
    log.info("agent image %s is ready", tag)


async def ensure_image(client: docker.DockerClient, context_dir: Path, tag: str, *, base_image: str,
                       extra_packages: str = "") -> None:
    """Build the image when missing; warn when it was built from other agent_image/ files."""
    found = await asyncio.to_thread(_image_hash, client, tag)
    if found is None:
        log.warning("the agent image %s is missing: building it now (a few minutes the first time)", tag)
        await build_image(client, context_dir, tag, base_image=base_image, extra_packages=extra_packages)
        return
    if context_dir.is_dir() and found != await asyncio.to_thread(context_hash, context_dir):
        log.warning("the agent image %s was built from other agent_image/ files: run "
                    "`python -m bot images` to rebuild it", tag)
