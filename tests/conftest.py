"""Shared fixtures: a real Docker engine, test settings, and VM managers that clean up after themselves.

Tests that need Docker never skip: without an engine they fail with a message pointing at
scripts/test.sh, which installs and starts one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import docker
import docker.errors
import ollama
import pytest

from bot.agent.events import AgentEvent
from bot.agent.loop import Agent
from bot.agent.model import ModelConfig
from bot.config import Settings, load_settings
from bot.notify import queue_vm_notification
from bot.records import Conversation
from bot.store import Store
from bot.vm.docker_ops import remove_app
from bot.vm.manager import VMManager
from tests.fakes.ollama_server import FakeOllama

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

    async def ignore(key: Any, notification: Any) -> None:
        pass

    async def make(on_notify: Any = ignore, **overrides: Any) -> VMManager:
        manager = VMManager(make_settings(**overrides), docker_client, on_notify=on_notify)
        await manager.__aenter__()
        opened.append(manager)
        return manager

    yield make
    for manager in opened:
        await manager.__aexit__(None, None, None)
    remove_app(docker_client, app_name)


@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as fake:
        yield fake


@pytest.fixture
async def store(tmp_path: Any) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "data" / "bot.sqlite3") as opened:
        yield opened


@dataclass
class AgentRig:
    """An agent wired as __main__ wires it: store, VM manager (real Docker), Ollama client (the double)."""

    agent: Agent
    store: Store
    vms: VMManager
    ollama: FakeOllama

    async def conversation(self, owner_id: int = 1001, external_id: str = "t1") -> Conversation:
        key = self.vms.key_for(owner_id)
        return await self.store.get_or_create_conversation("thread", external_id, owner_id, key.scope)

    async def turn(self, conversation: Conversation, text: str) -> list[AgentEvent]:
        return [event async for event in self.agent.run_turn(conversation, text)]


@pytest.fixture
async def make_rig(make_manager: Callable[..., Any], fake_ollama: FakeOllama,
                   store: Store) -> AsyncIterator[Callable[..., Any]]:
    clients: list[ollama.AsyncClient] = []

    async def make(timeout: float = 10.0, **overrides: Any) -> AgentRig:
        vms = await make_manager(on_notify=partial(queue_vm_notification, store), **overrides)
        client = ollama.AsyncClient(host=fake_ollama.url, timeout=timeout)
        clients.append(client)
        model = ModelConfig(host=fake_ollama.url, model=vms.settings.ollama_model, num_ctx=vms.settings.ollama_num_ctx,
                            think=vms.settings.ollama_think, timeout_s=timeout, retries=2, backoff_s=0.05)
        return AgentRig(Agent(vms.settings, store, vms, client, model), store, vms, fake_ollama)

    yield make
    for client in clients:
        await client.close()
