"""Blocking docker-py calls for the VM manager, one function per operation.

Each is run by the manager through `asyncio.to_thread`; docker errors are translated into
`EngineError`/`VMError` here, where they are caught.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from bot.errors import EngineError, VMError

log = logging.getLogger(__name__)

LABEL_APP = "agentbot.app"
LABEL_OWNER = "agentbot.owner"
LABEL_SCOPE = "agentbot.scope"
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one VM's container."""

    name: str
    image: str
    volume: str
    network: str | None  # None: --network none
    labels: dict[str, str]
    environment: dict[str, str]
    mem_limit: int
    nano_cpus: int
    pids_limit: int


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    status: str  # created, running, exited, ...
    started_at: str
    labels: dict[str, str]


def _state(container: Container) -> ContainerState:
    attrs = container.attrs
    return ContainerState(
        id=container.id or "", name=container.name or "", status=attrs["State"]["Status"],
        started_at=attrs["State"].get("StartedAt", ""), labels=dict(attrs["Config"].get("Labels") or {}),
    )


def ping(client: docker.DockerClient) -> None:
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"The Docker engine does not answer ({exc}). Is dockerd running, and may the bot "
                          "use its socket?") from exc


def ensure_network(client: docker.DockerClient, name: str, app: str) -> None:
    """A bridge network of the bot's own, with traffic between containers turned off."""
    try:
        if client.networks.list(names=[name]):
            return
        client.networks.create(name, driver="bridge", labels={LABEL_APP: app},
                               options={"com.docker.network.bridge.enable_icc": "false"})
        log.info("created network %s (inter-container traffic off)", name)
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # created meanwhile by another manager
            return
        raise EngineError(f"Could not create the Docker network {name}: {exc.explanation}") from exc


def find(client: docker.DockerClient, name: str) -> ContainerState | None:
    try:
        return _state(client.containers.get(name))
    except docker.errors.NotFound:
        return None
    except docker.errors.DockerException as exc:
        raise EngineError(f"Could not inspect container {name}: {exc}") from exc


def list_app(client: docker.DockerClient, app: str) -> list[ContainerState]:
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_APP}={app}"})
    except docker.errors.DockerException as exc:
        raise EngineError(f"Could not list the VMs: {exc}") from exc
    return [_state(c) for c in found]


def create(client: docker.DockerClient, spec: ContainerSpec) -> ContainerState:
    kwargs: dict[str, Any] = dict(
        name=spec.name, hostname=spec.name[:63], labels=spec.labels, environment=spec.environment,
        volumes={spec.volume: {"bind": WORKSPACE, "mode": "rw"}},
        # Hardening: the VM user is uid 1000 and needs no capability at all.
        cap_drop=["ALL"], security_opt=["no-new-privileges"],
        mem_limit=spec.mem_limit, memswap_limit=spec.mem_limit, nano_cpus=spec.nano_cpus,
        pids_limit=spec.pids_limit, detach=True, init=False,  # tini is the image's ENTRYPOINT
    )
    if spec.network is None:
        kwargs["network_mode"] = "none"
    else:
        kwargs["network"] = spec.network
    try:
        client.volumes.create(spec.volume, labels={LABEL_APP: spec.labels[LABEL_APP]})
        return _state(client.containers.create(spec.image, **kwargs))
    except docker.errors.ImageNotFound as exc:
        raise VMError(f"The agent image {spec.image} is missing: run `python -m bot images`.") from exc
    except docker.errors.DockerException as exc:
        raise VMError(f"Could not create the VM {spec.name}: {exc}") from exc


def start(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.start(container_id)  # the low-level call: no inspect before or after (~20 ms each)
    except docker.errors.DockerException as exc:
        raise VMError(f"Could not start the VM {container_id[:12]}: {exc}") from exc


def stop(client: docker.DockerClient, container_id: str, timeout: int = 5) -> None:
    try:
        client.containers.get(container_id).stop(timeout=timeout)
    except docker.errors.NotFound:
        return
    except docker.errors.DockerException as exc:
        raise VMError(f"Could not stop the VM {container_id[:12]}: {exc}") from exc


def remove(client: docker.DockerClient, name: str, volume: str | None = None) -> None:
    """Remove the container (and the workspace volume when given); missing ones are fine."""
    try:
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        if volume is not None:
            try:
                client.volumes.get(volume).remove(force=True)
            except docker.errors.NotFound:
                pass
    except docker.errors.DockerException as exc:
        raise VMError(f"Could not remove the VM {name}: {exc}") from exc


def remove_app(client: docker.DockerClient, app: str) -> None:
    """Remove every container, workspace volume and network of this app name (tests, benches, cleanup)."""
    selector = {"label": f"{LABEL_APP}={app}"}
    try:
        for container in client.containers.list(all=True, filters=selector):
            container.remove(force=True)
        for volume in client.volumes.list(filters=selector):
            volume.remove(force=True)
        for network in client.networks.list(filters=selector):
            network.remove()
    except docker.errors.DockerException as exc:
        raise EngineError(f"Could not remove the VMs of {app}: {exc}") from exc
