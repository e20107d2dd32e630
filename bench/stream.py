"""Streaming benchmark: 50 concurrent /task threads streaming paced model text through the whole bot.

    python bench/stream.py [--tasks 50] [--chunks 40] [--pace 0.1]

The doubles run in this process (the Ollama double, the Discord double); the bot runs as production
runs it in a CHILD process (tests/e2e/bot_process.py: `python -m bot run` pointed at the double), so
its resident memory is its own. /task is run `--tasks` times at once, by as many users; each model
reply streams `--chunks` pieces of text, `--pace` s apart, the first one carrying a marker.
Text-only replies start no VM (no tool is called): what is measured is the stream.

- first_visible_s: the double's write of the first text chunk (wall clock, recorded by a timing line
  writer patched into the Ollama double) -> the first version of a Discord message holding that
  chunk (MessageVersion.at in the Discord double's records). Median over the tasks; p95 and max too.
- http_429: the Discord double's rate_limited_count over the whole load (announcements included).
- bot_rss_mb: the bot process's peak VmRSS while the streams run; baseline_rss_mb: its VmRSS idle
  right after login. Both from /proc/<pid>/status, in the same run.

Prints a table, then as its LAST line one JSON object. Exits 1 with a message if something fails.
Needs the engine and the agent image (the bot checks the image at start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report import print_figures  # noqa: E402 (bench/report.py: the table, then the figures as one json line)

from bot.vm.docker_ops import remove_app  # noqa: E402 (after the sys.path line)
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeInteraction, FakeUser  # noqa: E402
from tests.fakes.ollama_double import server as ollama_server  # noqa: E402
from tests.fakes.ollama_server import FakeOllama, RecordedRequest, Reply  # noqa: E402

MARKER = re.compile(r"⟦(\d+)⟧")
FINAL = re.compile(r"(✅ done|❌ failed|⏹ cancelled)")
PROMPT = "bench stream {n}"
READY_TIMEOUT_S = 60.0
T = TypeVar("T")
WORDS = ("The", "stream", "goes", "on:", "each", "piece", "leaves", "the", "model", "a", "little", "later;")


class BenchError(Exception):
    """The bench could not measure what it should: a clear sentence for the user."""


@dataclass
class Timeline:
    """Wall-clock times (time.time()) of first text chunks, by marker number."""

    first_sent: dict[int, float] = field(default_factory=dict)


@contextmanager
def timed_ollama_lines(timeline: Timeline) -> Iterator[None]:
    """Patch the Ollama double's line writer: note when each marker's line has been written."""
    original = ollama_server._LineWriter

    class TimedLineWriter(original):  # type: ignore[misc, valid-type]
        async def send(self, line: str) -> None:
            await super().send(line)
            found = MARKER.search(line)
            if found:
                timeline.first_sent.setdefault(int(found[1]), time.time())

    ollama_server._LineWriter = TimedLineWriter  # type: ignore[misc]
    try:
        yield
    finally:
        ollama_server._LineWriter = original  # type: ignore[misc]


def reply_parts(number: int, chunks: int) -> list[str]:
    """Task `number`'s answer: its marker first, then `chunks - 1` words."""
    return [f"⟦{number}⟧ "] + [WORDS[i % len(WORDS)] + " " for i in range(chunks - 1)]


def paced_reply(chunks: int, pace: float) -> Callable[[RecordedRequest], Reply]:
    """The model: a text answer streamed in `chunks` pieces, `pace` s apart."""
    def build(request: RecordedRequest) -> Reply:
        last = request.messages[-1]
        found = re.search(r"(\d+)$", str(last.get("content", "")))
        if last.get("role") != "user" or not found:
            raise BenchError(f"unexpected chat request: last message {last!r}")
        return Reply.text(*reply_parts(int(found[1]), chunks), delay=pace)
    return build


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"/proc/{pid}/status has no {field_name}")


@dataclass
class Child:
    process: asyncio.subprocess.Process
    stderr_path: Path

    def tail(self, lines: int = 15) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(nothing on stderr)"


def log_problems(child: Child) -> list[str]:
    """Warnings and errors the bot logged (its log level is WARNING), echoed on stderr; discord.py's
    note that voice support is missing is not one."""
    text = child.stderr_path.read_text(errors="replace") if child.stderr_path.exists() else ""
    lines = [line for line in text.splitlines()
             if re.search(r" (WARNING|ERROR|CRITICAL) ", line) and "voice will NOT be supported" not in line]
    for line in lines:
        print(f"bot: {line}", file=sys.stderr)
    return lines


async def while_alive(child: Child, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`, failing at once if the bot process exits meanwhile."""
    task = asyncio.ensure_future(work)
    exited = asyncio.ensure_future(child.process.wait())
    try:
        await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise BenchError(f"the bot exited ({child.process.returncode}) during the load:\n{child.tail()}")
        return task.result()
    finally:
        for pending in (task, exited):
            pending.cancel()
        await asyncio.gather(task, exited, return_exceptions=True)


async def start_bot(fake: FakeDiscord, ollama_url: str, users: list[FakeUser], app: str, tmp: Path) -> Child:
    env = {**os.environ, "FAKE_DISCORD_URL": fake.url, "DISCORD_TOKEN": fake.token, "OLLAMA_HOST": ollama_url,
           "SYNC_GUILD_IDS": str(fake.guild.id), "ALLOWED_USER_IDS": ",".join(str(u.id) for u in users),
           "APP_NAME": app, "DATA_DIR": str(tmp / "data"), "VM_DESKTOP": "false", "LOG_LEVEL": "WARNING"}
    stderr_path = tmp / "bot.stderr"
    stderr = stderr_path.open("wb")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "e2e" / "bot_process.py"), cwd=tmp, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
    finally:
        stderr.close()  # the child has its own copy
    child = Child(process, stderr_path)
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
    except TimeoutError:
        raise BenchError(f"the bot was not ready within {READY_TIMEOUT_S:g} s:\n{child.tail()}") from None
    if not line.startswith(b"READY"):
        await process.wait()
        raise BenchError(f"the bot did not start (exit {process.returncode}):\n{child.tail()}")
    return child


async def stop_bot(child: Child) -> None:
    process = child.process
    if process.returncode is None:
        process.terminate()  # SIGTERM: the bot closes cleanly
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


def announced(interaction: FakeInteraction) -> bool:
    return any(re.search(r"<#(\d+)>", m.content) for m in interaction.responses)


def finished_threads(fake: FakeDiscord, general: FakeChannel, tasks: int) -> list[FakeChannel] | None:
    threads = fake.threads(general)
    if len(threads) < tasks:
        return None
    for thread in threads:
        messages = fake.messages(thread)
        if not any(FINAL.search(m.content) for m in messages) or any(m.buttons() for m in messages):
            return None
    return threads


async def run_load(fake: FakeDiscord, users: list[FakeUser], timeout: float
                   ) -> tuple[list[FakeChannel], float, float]:
    """Every user runs /task at once; wait for every thread's footer, then every announcement.
    Returns the threads, the seconds to the last footer and to the last announcement."""
    general = fake.channel("general")
    started = time.monotonic()
    interactions = [await fake.run_command("task", user, general, {"prompt": PROMPT.format(n=n)})
                    for n, user in enumerate(users)]
    threads = await fake.wait_for(lambda: finished_threads(fake, general, len(users)), timeout)
    assert threads is not None  # wait_for returns a truthy result
    footers_s = time.monotonic() - started
    await fake.wait_for(lambda: all(announced(i) for i in interactions), timeout)
    return threads, footers_s, time.monotonic() - started


def first_visible(fake: FakeDiscord, threads: list[FakeChannel], timeline: Timeline) -> list[float]:
    """Per task: first appearance of its marker in a message version minus the double's send time."""
    seen: dict[int, float] = {}
    for thread in threads:
        for message in fake.messages(thread):
            for version in message.versions:
                found = MARKER.search(version.content)
                if found:
                    number = int(found[1])
                    seen[number] = min(seen.get(number, float("inf")), version.at.timestamp())
    missing = sorted(set(timeline.first_sent) ^ set(seen))
    if missing or not seen:
        raise BenchError(f"markers sent and seen differ: {missing[:10]} (sent {len(timeline.first_sent)},"
                         f" seen {len(seen)})")
    return [seen[n] - timeline.first_sent[n] for n in seen]


def check_replies(fake: FakeDiscord, threads: list[FakeChannel], chunks: int) -> None:
    """Every thread ended done, holding the whole streamed text."""
    for thread in threads:
        text = "\n".join(m.content for m in fake.messages(thread))
        found = MARKER.search(text)
        expected = "".join(reply_parts(int(found[1]), chunks)).strip() if found else "(no marker)"
        if "✅ done" not in text or expected not in text:
            raise BenchError(f"thread {thread.name!r} did not get the whole answer:\n{text[-400:]}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(args: argparse.Namespace, app: str, tmp: Path) -> dict[str, Any]:
    timeline = Timeline()
    with timed_ollama_lines(timeline):
        async with FakeOllama() as ollama_double, FakeDiscord(guild_name="Bench Guild") as fake:
            users = [fake.add_user(f"user{n}") for n in range(args.tasks)]
            ollama_double.script(*(Reply.dynamic(paced_reply(args.chunks, args.pace)) for _ in users))
            child = await start_bot(fake, ollama_double.url, users, app, tmp)
            try:
                return await measure_running(args, fake, ollama_double, users, child, timeline)
            finally:
                await stop_bot(child)


async def measure_running(args: argparse.Namespace, fake: FakeDiscord, ollama_double: FakeOllama,
                          users: list[FakeUser], child: Child, timeline: Timeline) -> dict[str, Any]:
    pid = child.process.pid
    await asyncio.sleep(1.0)  # idle, right after login
    baseline = rss_mb(pid)
    peak, stop = [0.0], asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, peak, stop))
    try:
        threads, footers_s, load_s = await while_alive(child, run_load(fake, users, args.timeout))
    except TimeoutError as exc:
        raise BenchError(f"the load did not finish: {exc}\nbot stderr:\n{child.tail()}") from None
    finally:
        stop.set()
        await sampler
    check_replies(fake, threads, args.chunks)
    ollama_double.assert_clean()
    visible = first_visible(fake, threads, timeline)
    other_errors = [e for e in fake.errors if e.status != 429]
    return {
        "first_visible_s": round(statistics.median(visible), 3), "http_429": fake.rate_limited_count,
        "bot_rss_mb": round(peak[0], 1), "baseline_rss_mb": round(baseline, 1),
        "first_visible_p95_s": round(pct(visible, 0.95), 3), "first_visible_max_s": round(max(visible), 3),
        "bot_hwm_mb": round(rss_mb(pid, "VmHWM"), 1), "other_4xx": len(other_errors),
        "bot_log_problems": len(log_problems(child)), "tasks": len(threads),
        "stream_s": round(args.chunks * args.pace, 1),
        "first_token_spread_s": round(max(timeline.first_sent.values()) - min(timeline.first_sent.values()), 2),
        "footers_s": round(footers_s, 1), "load_s": round(load_s, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    client = docker.from_env()
    app = f"bench{uuid.uuid4().hex[:6]}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
            return await measure(args, app, Path(tmp))
    finally:
        await asyncio.to_thread(remove_app, client, app)
        client.close()


TARGETS = {
    "first_visible_s": "<= 1.0 s (median)", "http_429": "== 0", "bot_rss_mb": "<= 150 (peak under load)",
    "baseline_rss_mb": "(idle after login)", "first_visible_p95_s": "", "first_visible_max_s": "",
    "bot_hwm_mb": "(VmHWM at the end)", "other_4xx": "(Discord errors besides 429)",
    "bot_log_problems": "(WARNING+ lines in the bot's log)", "tasks": "(text-only replies: no VM is started)",
    "stream_s": "(model time per reply)", "first_token_spread_s": "(first to last stream start)",
    "footers_s": "(/task x N -> every thread's footer)", "load_s": "(... -> every announcement too)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--pace", type=float, default=0.1, help="seconds between streamed chunks")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds for the whole load")
    args = parser.parse_args()
    try:
        figures = asyncio.run(bench(args))
    except BenchError as exc:
        print(f"bench/stream.py failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the engine, the doubles, an assertion: one clear line
        print(f"bench/stream.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print_figures(figures, TARGETS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
