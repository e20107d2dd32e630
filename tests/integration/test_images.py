"""The agent image is built when missing (saying so) and an image built from other files is flagged."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.images import CONTEXT_HASH_LABEL, context_hash, ensure_image

pytestmark = pytest.mark.docker


async def test_missing_image_is_built_and_a_stale_one_flagged(docker_client: docker.DockerClient, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    base = docker_client.images.get("agentbot-vm:latest").tags[0]  # any local image will do as a base
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nLABEL purpose=test\n")
    tag = f"agentbot-test-{uuid.uuid4().hex[:8]}:latest"
    caplog.set_level(logging.INFO, logger="bot.images")
    try:
        await ensure_image(docker_client, context, tag, base_image=base)
        image: Any = docker_client.images.get(tag)
        assert image.labels[CONTEXT_HASH_LABEL] == context_hash(context)
        assert any("is missing: building it now" in r.message for r in caplog.records)

        caplog.clear()
        await ensure_image(docker_client, context, tag, base_image=base)  # up to date: nothing said
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

        (context / "extra.txt").write_text("a file the image was not built with")
        await ensure_image(docker_client, context, tag, base_image=base)
        assert any("python -m bot images" in r.message for r in caplog.records)
    finally:
        docker_client.images.remove(tag, force=True)
