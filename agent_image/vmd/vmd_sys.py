"""vmd's view of the system: cgroup counters (v1 and v2), /proc scans, atomic JSON state files."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from typing import Any

CGROUP = os.environ.get("VMD_CGROUP_ROOT", "/sys/fs/cgroup")
EXCLUDED_ROLES = (b"VMD_ROLE=desktop", b"VMD_ROLE=attach")


def write_atomic(path: str, data: bytes, *, mode: int = 0o644, sync: bool = False) -> None:
    """Write through a temporary file in the same folder and rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.",
                               suffix=".vmdtmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode & 0o7777)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str, data: Any, *, sync: bool = False) -> None:
    write_atomic(path, json.dumps(data, separators=(",", ":")).encode(), mode=0o600, sync=sync)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


def oom_kills() -> int:
    """The memory cgroup's oom_kill counter (0 when unknown)."""
    v1 = _keyed(_read(f"{CGROUP}/memory/memory.oom_control"), "oom_kill")
    if v1 is not None:
        return v1
    return _keyed(_read(f"{CGROUP}/memory.events"), "oom_kill") or 0


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def memory() -> tuple[int, int | None]:
    usage = _int(_read(f"{CGROUP}/memory/memory.usage_in_bytes"))
    if usage is not None:
        limit = _int(_read(f"{CGROUP}/memory/memory.limit_in_bytes"))
    else:
        usage = _int(_read(f"{CGROUP}/memory.current")) or 0
        limit = _int(_read(f"{CGROUP}/memory.max"))  # "max" -> None
    if limit is not None and limit >= 1 << 62:
        limit = None
    return usage, limit


def cpu_usage_ns() -> int:
    v1 = _int(_read(f"{CGROUP}/cpuacct/cpuacct.usage")) or _int(_read(f"{CGROUP}/cpu,cpuacct/cpuacct.usage"))
    if v1 is not None:
        return v1
    usec = _keyed(_read(f"{CGROUP}/cpu.stat"), "usage_usec")
    return (usec or 0) * 1000


def _stat_fields(pid: int | str) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from 3 (state) on


def uptime_s() -> float:
    """Seconds since the container's PID 1 started."""
    fields, up = _stat_fields(1), _read("/proc/uptime")
    if not fields or not up:
        return 0.0
    start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return round(max(0.0, float(up.split()[0]) - start), 2)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + f.read() + b"\0"
    except OSError:
        return None


def user_processes() -> int:
    """Processes that are not PID 1, vmd, the attach relays or the desktop (zombies aside)."""
    me, count = os.getpid(), 0
    for pid in _pids():
        if pid in (1, me):
            continue
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            continue
        env = _environ(pid)
        if env is not None and any(b"\0" + role + b"\0" in env for role in EXCLUDED_ROLES):
            continue
        count += 1
    return count


def kill_marked(marker: str, pgid: int | None) -> int:
    """SIGKILL the process group and every process whose environment carries VMD_JOB=<marker>."""
    needle, me, killed = f"\0VMD_JOB={marker}\0".encode(), os.getpid(), 0
    for _ in range(5):
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        found = [p for p in _pids() if p != me and needle in (_environ(p) or b"")]
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not found:
            break
    return killed
