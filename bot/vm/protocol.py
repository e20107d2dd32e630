"""The exec channel's wire protocol between the bot and the in-VM helper (vmd), and its typed records.

Framing (both directions)
-------------------------
Every message is one frame::

    struct.pack(">II", len(header), len(payload)) + header + payload

``header`` is a compact UTF-8 JSON object; ``payload`` is raw bytes (may be empty). Binary data never
goes into JSON. The bot reaches vmd through ONE ``docker exec -i python3 /opt/vmd/attach.py`` per VM;
without a TTY, Docker wraps the relay's stdout in its own 8-byte stream headers (``>BxxxL``: stream id,
length) that do not line up with frames: :class:`DockerDemuxer` strips them (stream 1 carries the
protocol, stream 2 is the relay's diagnostics).

Requests and events
-------------------
Every request carries an integer ``id`` chosen by the bot and an ``op``. Every event carries the ``id``
of the request it answers (``0`` for unsolicited events) and an ``ev``. vmd runs requests concurrently,
keyed by id. Errors are ``{"ev":"error","code":"...","message":"..."}`` (message fit for a user).

* ``hello`` MUST be the first frame on a connection; vmd sends nothing before it (bytes sent along with
  Docker's HTTP 101 are lost). -> ``{"ev":"hello","version":1,"pid":..,"boot_time":..}``, then every
  unacknowledged notification is (re)sent as ``{"id":0,"ev":"notify","nid":N,"text":..,
  "conversation":..|null,"ts":..}``; new ones are pushed as they arrive. ``notify_ack {nids:[..]}``
  drops them (they are persisted in vmd's state dir until acknowledged). No reply.
* ``exec {cmd, session="default", cwd?, env?, timeout?, stdin: bool, cap}`` -> zero or more
  ``{"ev":"out","stream":"stdout"|"stderr"}`` + payload as produced, then exactly one
  ``{"ev":"exit","code","reason":"exit"|"timeout"|"killed"|"oom","dropped","duration"}``. The command
  runs in ``bash``; cwd and exported variables persist per session; ``env``/``cwd`` apply to this call
  only. The call ends when the main process exits (background children keep running). Output past
  ``cap/2`` bytes is kept as a ``cap/2`` tail; at exit a ``[... N bytes dropped ...]`` marker chunk and
  the tail are sent. Signals give code 128+signal.
* ``stdin {target, eof?}`` + payload -> written to that job's stdin (no reply unless it fails).
  ``kill {target}`` -> kills the whole job (process group plus every process carrying the job's
  environment marker) -> ``{"ev":"result","killed":n}``.
* Files, as the VM's user, relative paths under /workspace: ``read {path, max}`` -> result ``{size}`` +
  payload; ``write {path, mode?}`` + payload (atomic) -> result ``{size}``; ``list {path}`` -> result
  ``{entries:[{name,type,size,mtime}]}``; ``stat {path}`` -> result ``{name,type,size,mtime}``;
  ``archive_out {path, format:"tar"|"zip", max}`` -> result + payload; ``archive_in {path, format:"tar"}``
  + payload -> result ``{members}``; members with absolute paths, ``..``, links escaping the destination,
  paths through symlinks, devices or fifos are refused before anything is written. Error codes:
  not_found, is_dir, not_dir, not_file, denied, too_large, unsafe_archive, bad_archive, io_error.
* ``tunnel_open {port}`` -> ``{"ev":"opened"}`` or error; then ``tunnel_data {target}`` + payload
  (bot -> VM) and ``{"ev":"data"}`` + payload (VM -> bot); ``tunnel_close {target}``; ``{"ev":"closed"}``
  ends it (either side).
* Other error codes: no_hello (first frame was not hello; vmd then closes), bad_request, bad_cwd,
  spawn_failed, no_stdin, not_found (unknown target), refused (tunnel), internal.
* ``stats`` -> result ``{memory_bytes, memory_limit, cpu_usage_ns, uptime_s, user_processes,
  tunnels_open, jobs_running}``.

vmd itself is stdlib-only and carries its own copy of the framing (agent_image/vmd/vmd.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
FRAME_PREFIX = struct.Struct(">II")
DOCKER_PREFIX = struct.Struct(">BxxxL")
MAX_HEADER = 1 << 20
# Code in the VM runs as the helper's user and could answer in its place: a frame may not make the
# bot buffer more than this (the largest file or archive the bot asks for is smaller).
MAX_PAYLOAD = 128 << 20


class ProtocolError(ValueError):
    """The byte stream does not follow the framing (corrupt or foreign data)."""


@dataclass(frozen=True, slots=True)
class Frame:
    header: dict[str, Any]
    payload: bytes = b""


def encode_header(header: dict[str, Any], payload_len: int = 0) -> bytes:
    """The length prefix and the JSON header of a frame (the payload follows as is)."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return FRAME_PREFIX.pack(len(raw), payload_len) + raw


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return encode_header(header, len(payload)) + payload


class FrameDecoder:
    """Incremental frame parser: feed it bytes in any split, get whole frames back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        while len(buf) - pos >= FRAME_PREFIX.size:
            hlen, plen = FRAME_PREFIX.unpack_from(buf, pos)
            if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
                raise ProtocolError(f"frame too large (header {hlen}, payload {plen})")
            start = pos + FRAME_PREFIX.size
            end = start + hlen + plen
            if len(buf) < end:
                break
            try:
                header = json.loads(bytes(buf[start : start + hlen]))
            except ValueError as exc:
                raise ProtocolError(f"bad frame header: {exc}") from exc
            if not isinstance(header, dict):
                raise ProtocolError("frame header is not a JSON object")
            frames.append(Frame(header, bytes(buf[start + hlen : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


class DockerDemuxer:
    """Strips Docker's 8-byte stream headers (non-TTY exec output) from a byte stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= DOCKER_PREFIX.size:
            stream, length = DOCKER_PREFIX.unpack_from(buf, pos)
            end = pos + DOCKER_PREFIX.size + length
            if len(buf) < end:
                break
            out.append((stream, bytes(buf[pos + DOCKER_PREFIX.size : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


# ---- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloInfo:
    version: int
    pid: int
    boot_time: float


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True, slots=True)
class ExecResult:
    code: int
    reason: str  # "exit" | "timeout" | "killed" | "oom"
    dropped: int
    duration: float

    @property
    def ok(self) -> bool:
        return self.reason == "exit" and self.code == 0

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> ExecResult:
        return cls(int(ev["code"]), str(ev["reason"]), int(ev.get("dropped", 0)), float(ev.get("duration", 0)))


@dataclass(frozen=True, slots=True)
class CompletedExec:
    result: ExecResult
    stdout: bytes
    stderr: bytes

    @property
    def code(self) -> int:
        return self.result.code

    @property
    def text(self) -> str:
        """stdout then stderr, decoded leniently (for showing a user or a model)."""
        return (self.stdout + self.stderr).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    type: str  # "file" | "dir" | "link" | "other"
    size: int
    mtime: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DirEntry:
        return cls(str(d["name"]), str(d["type"]), int(d["size"]), float(d["mtime"]))


@dataclass(frozen=True, slots=True)
class VMStats:
    memory_bytes: int
    memory_limit: int | None
    cpu_usage_ns: int
    uptime_s: float
    user_processes: int
    tunnels_open: int
    jobs_running: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VMStats:
        limit = d.get("memory_limit")
        return cls(
            int(d.get("memory_bytes") or 0),
            int(limit) if limit is not None else None,
            int(d.get("cpu_usage_ns") or 0),
            float(d.get("uptime_s") or 0),
            int(d.get("user_processes") or 0),
            int(d.get("tunnels_open") or 0),
            int(d.get("jobs_running") or 0),
        )


@dataclass(frozen=True, slots=True)
class Notification:
    nid: int
    text: str
    conversation: str | None
    ts: float

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> Notification:
        conv = ev.get("conversation")
        return cls(int(ev["nid"]), str(ev["text"]), str(conv) if conv is not None else None, float(ev["ts"]))
