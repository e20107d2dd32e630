"""Agent turn benchmark: the bot's own cost per turn, and single-message store appends.

    python bench/turn.py [--runs 50] [--appends 3000]

One run = one full `Agent.run_turn` against an instant model (the Ollama double, no delays) that
calls the exec tool once (`true`) and then answers, in a fresh conversation, on a real VM. Right
after it, in the same run, the same work is done bare: the two chat requests the agent sent
(replayed byte for byte through `ollama.AsyncClient.chat(stream=True)`, same scripted replies)
and one `channel.run("true")`. overhead = turn - bare, per run; its median is overhead_p50_ms.
store_appends_per_s: single `Store.append_message` calls (each its own transaction) on a file
database in a temp dir.

Prints a table, then as its LAST line one JSON object.
Needs the engine and the agent image (scripts/test.sh provides both).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import ollama

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import print_figures  # noqa: E402 (bench/report.py: the table, then the figures as one json line)

from bot.agent.events import Done
from bot.agent.loop import Agent
from bot.agent.model import ModelConfig
from bot.config import Settings, load_settings
from bot.notify import queue_vm_notification
from bot.store import Store
from bot.vm.channel import ExecChannel
from bot.vm.docker_ops import remove_app
from bot.vm.manager import VMManager
from tests.fakes.ollama_server import FakeOllama, RecordedRequest, Reply

OWNER = 1001
ANSWER = "Done: `true` exited 0."


@dataclass
class Samples:
    turn: list[float] = field(default_factory=list)
    chat: list[float] = field(default_factory=list)
    exec: list[float] = field(default_factory=list)

    def overhead(self) -> list[float]:
        return [t - c - e for t, c, e in zip(self.turn, self.chat, self.exec)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def script_turn(fake: FakeOllama) -> None:
    """The model of one run: exec `true`, then a short answer; no delays."""
    fake.script(Reply.tool_call("exec", {"command": "true"}), Reply.text(ANSWER))


async def one_turn(agent: Agent, store: Store, fake: FakeOllama, run: int) -> float:
    key = agent.vms.key_for(OWNER)
    conversation = await store.get_or_create_conversation("thread", f"bench-{run}", OWNER, key.scope)
    script_turn(fake)
    started = time.perf_counter()
    events = [event async for event in agent.run_turn(conversation, "Run `true` and tell me how it went.")]
    elapsed = time.perf_counter() - started
    if not isinstance(events[-1], Done) or events[-1].text != ANSWER:
        raise RuntimeError(f"run {run}: the turn did not end as scripted: {events[-1]!r}")
    return elapsed


def check_tool_ran(sent: list[RecordedRequest], run: int) -> None:
    result = sent[-1].messages[-1]
    if result.get("role") != "tool" or not str(result.get("content", "")).startswith("[exit 0;"):
        raise RuntimeError(f"run {run}: exec `true` did not run in the VM: {result!r}")


async def bare_chat(client: ollama.AsyncClient, fake: FakeOllama, requests: list[RecordedRequest]) -> float:
    """The same two chat calls, same bodies, straight through the ollama client."""
    script_turn(fake)
    started = time.perf_counter()
    for request in requests:
        body = request.body
        stream = await client.chat(model=body["model"], messages=body["messages"], tools=body.get("tools"),
                                   stream=True, think=body.get("think"), options=body.get("options"))
        async for _ in stream:
            pass
    return time.perf_counter() - started


async def bare_exec(channel: ExecChannel) -> float:
    started = time.perf_counter()
    done = await channel.run("true")
    elapsed = time.perf_counter() - started
    if done.result.code != 0:
        raise RuntimeError(f"`true` exited {done.result.code} in the VM")
    return elapsed


async def measure_turns(settings: Settings, client: docker.DockerClient, db: Path, runs: int) -> Samples:
    async with FakeOllama() as fake, Store.open(db) as store, \
            VMManager(settings, client, on_notify=partial(queue_vm_notification, store)) as vms:
        llm = ollama.AsyncClient(host=fake.url, timeout=10)
        model = ModelConfig(host=fake.url, model=settings.ollama_model, num_ctx=settings.ollama_num_ctx,
                            think=False, timeout_s=10, retries=2, backoff_s=0.05)
        agent = Agent(settings, store, vms, llm, model)
        try:
            channel = await vms.channel(vms.key_for(OWNER))  # the VM starts here, outside the runs
            samples = Samples()
            for run in range(-5, runs):  # five warm-up runs first, not counted
                turn = await one_turn(agent, store, fake, run)
                sent = fake.chat_requests[-2:]
                check_tool_ran(sent, run)
                chat = await bare_chat(llm, fake, sent)
                exe = await bare_exec(channel)
                if run >= 0:
                    samples.turn.append(turn)
                    samples.chat.append(chat)
                    samples.exec.append(exe)
            fake.assert_clean()
        finally:
            await llm.close()
    return samples


async def measure_appends(db: Path, count: int) -> float:
    async with Store.open(db) as store:
        conversation = await store.get_or_create_conversation("thread", "appends", OWNER, "user-1001")
        for _ in range(50):
            await store.append_message(conversation.id, "user", "warm-up")
        started = time.perf_counter()
        for number in range(count):
            await store.append_message(conversation.id, "assistant", f"message {number}: " + "x" * 200)
        return count / (time.perf_counter() - started)


async def bench(runs: int, appends: int) -> dict[str, Any]:
    client = docker.from_env()
    app = f"bench{uuid.uuid4().hex[:6]}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-turn-") as tmp:
            settings = load_settings(_env_file=None, app_name=app, vm_desktop=False, vm_idle_timeout=0,
                                     vm_memory="512m", data_dir=Path(tmp), discord_token="")
            samples = await measure_turns(settings, client, Path(tmp) / "turns.sqlite3", runs)
            appends_per_s = await measure_appends(Path(tmp) / "appends.sqlite3", appends)
    finally:
        await asyncio.to_thread(remove_app, client, app)
        client.close()
    ms = 1000.0
    overhead = samples.overhead()
    return {
        "overhead_p50_ms": round(ms * statistics.median(overhead), 2),
        "store_appends_per_s": round(appends_per_s),
        "overhead_p95_ms": round(ms * pct(overhead, 0.95), 2),
        "turn_p50_ms": round(ms * statistics.median(samples.turn), 2),
        "bare_chat_p50_ms": round(ms * statistics.median(samples.chat), 2),
        "bare_exec_p50_ms": round(ms * statistics.median(samples.exec), 2),
        "runs": runs,
    }


TARGETS = {"overhead_p50_ms": "<= 30 ms", "store_appends_per_s": ">= 2000", "overhead_p95_ms": "",
           "turn_p50_ms": "(run_turn, 2 model calls + 1 exec)", "bare_chat_p50_ms": "(2 bare chat calls)",
           "bare_exec_p50_ms": "(1 bare channel.run)", "runs": "(fresh conversation each)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--appends", type=int, default=3000)
    args = parser.parse_args()
    try:
        figures = asyncio.run(bench(args.runs, args.appends))
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash with a trace
        print(f"bench/turn.py failed: {exc!r}", file=sys.stderr)
        return 1
    print_figures(figures, TARGETS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
