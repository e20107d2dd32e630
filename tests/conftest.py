"""Shared fixtures: a real Docker engine, test settings, and VM managers that clean up after themselves.

Tests that need Docker never skip: without an engine they fail with a message pointing at
scripts/test.sh, which installs and starts one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from bot.config import Settings, load_settings
from bot.vm.docker_ops import LABEL_APP
from bot.vm.manager import VMManager

TEST_IMAGE = os.environ.get("AGENTBOT_TEST_IMAGE", "agentbot-vm:latest")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"The agent image {TEST_IMAGE} is missing: run scripts/test.sh (it builds it).")
    except docker.errors.DockerException as exc:
        pytest.fail(f"No Docker engine answers ({exc}): run scripts/test.sh, which installs and starts one.")
    yield client
    client.close()


def remove_app(client: docker.DockerClient, app: str) -> None:
    """Remove every container, volume and network labelled with this app name."""
    selector = {"label": f"{LABEL_APP}={app}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)
    for network in client.networks.list(filters=selector):
        network.remove()


@pytest.fixture
def app_name() -> str:
    """A fresh app name per test: its VMs, volumes and network are its own."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(app_name: str, tmp_path: Any) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            app_name=app_name, vm_image=TEST_IMAGE, vm_desktop=False, vm_memory="512m",
            vm_idle_timeout=0, data_dir=tmp_path / "data", discord_token="",
        )
        values.update(overrides)
        return load_settings(_env_file=None, **values)

    return make


@pytest.fixture
async def make_manager(docker_client: docker.DockerClient, make_settings: Callable[..., Settings],
                       app_name: str) -> AsyncIterator[Callable[..., Any]]:
    """Open VMManagers (closed at the end); every VM of the test is removed afterwards."""
    opened: list[VMManager] = []

    async def make(on_notify: Any = None, **overrides: Any) -> VMManager:
        manager = VMManager(make_settings(**overrides), docker_client, on_notify=on_notify)
        await manager.__aenter__()
        opened.append(manager)
        return manager

    yield make
    for manager in opened:
        await manager.__aexit__(None, None, None)
    remove_app(docker_client, app_name)
