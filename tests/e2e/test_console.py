"""`python -m bot console` as a user runs it: a subprocess, stdin then EOF, the Ollama double, the real engine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.config import Settings
from tests.conftest import TEST_IMAGE, remove_app
from tests.fakes.ollama_server import FakeOllama, Reply, refused_url

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


async def run_console(tmp_path: Path, app_name: str, ollama_host: str, stdin: str,
                      timeout: float = 180) -> tuple[int, str, str]:
    """Run the console with `stdin` then EOF; its exit code, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}  # no stray settings
    env.update(
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", APP_NAME=app_name, DATA_DIR=str(tmp_path / "data"),
        VM_DESKTOP="false", VM_IMAGE=TEST_IMAGE, BASE_IMAGE="agent-base:bookworm", VM_MEMORY="512m",
        VM_IDLE_TIMEOUT="0", OLLAMA_HOST=ollama_host, OLLAMA_THINK="false", LOG_LEVEL="INFO",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "console", cwd=tmp_path, env=env,  # cwd: no developer .env is read
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(f"the console did not exit within {timeout} s\nstdout:\n{out.decode()}\nstderr:\n{err.decode()}")
    return process.returncode or 0, out.decode(), err.decode()


@pytest.fixture
def cleanup(docker_client: docker.DockerClient, app_name: str) -> Any:
    yield
    remove_app(docker_client, app_name)


async def test_console_runs_a_tool_in_the_vm_and_answers(tmp_path: Path, app_name: str, fake_ollama: FakeOllama,
                                                         cleanup: Any) -> None:
    fake_ollama.script(Reply.tool_call("exec", {"command": "echo from-the-vm"}),
                       Reply.text("The VM answered ", "with its greeting."))
    code, out, err = await run_console(tmp_path, app_name, fake_ollama.url, "run it\n")
    context = f"\nstdout:\n{out}\nstderr:\n{err}"

    assert code == 0, context
    lines = out.splitlines()
    assert f"VM {app_name}-user-0" in lines[0], context
    card = next((line for line in lines if line.startswith("▶ exec")), None)
    assert card is not None and "echo from-the-vm" in card and "(step 1/" in card, context
    assert "from-the-vm" in lines, "the command's output, on its own line" + context
    assert any(line.startswith("✓ exit 0 · ") for line in lines), context
    assert "The VM answered with its greeting." in out, context
    done = [line for line in lines if line.startswith("✅ done")]
    assert len(done) == 1 and "2 steps" in done[0], context
    assert out.index(card) < out.index("✓ exit 0") < out.index("The VM answered") < out.index("✅ done"), context
    assert lines[-1].endswith("bye"), "EOF ends the console" + context
    assert "Traceback" not in out + err, context

    assert fake_ollama.chat_requests[0].messages[-1] == {"role": "user", "content": "run it"}
    tool_results = [m for m in fake_ollama.chat_requests[1].messages if m["role"] == "tool"]
    assert len(tool_results) == 1 and "from-the-vm" in tool_results[0]["content"]
    fake_ollama.assert_clean()


async def test_console_with_ollama_unreachable_says_so_in_one_sentence(tmp_path: Path, app_name: str,
                                                                       cleanup: Any) -> None:
    host = refused_url()
    code, out, err = await run_console(tmp_path, app_name, host, "run it\n")
    context = f"\nstdout:\n{out}\nstderr:\n{err}"

    assert code == 0, context
    failures = [line for line in out.splitlines() if "❌ failed" in line]
    assert failures == [f"❌ failed: Ollama at {host} is not reachable: is it running, and is OLLAMA_HOST right?"], \
        context
    assert out.rstrip().endswith("bye"), context
    assert "Traceback" not in out + err, context
