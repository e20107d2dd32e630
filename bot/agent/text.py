"""Text hygiene for what crosses from the VM to the model and the user."""

from __future__ import annotations

import re

# CSI/OSC escape sequences and lone control characters (tabs and newlines kept).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str) -> str:
    """Remove terminal escapes and control characters; turn CRLF/CR progress lines into lines."""
    text = _ANSI.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def decode(data: bytes) -> str:
    """Bytes from the VM -> clean text; invalid UTF-8 becomes U+FFFD, never an exception."""
    return clean(data.decode("utf-8", errors="replace"))


def clip(text: str, limit: int) -> str:
    """Keep the head and the tail of a long text, saying how much was left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    dropped = len(text) - head - tail
    return f"{text[:head]}\n[... {dropped:,} characters left out ...]\n{text[-tail:]}"


def took(seconds: float) -> str:
    """A turn's duration as the footer shows it: "7.4 s", "1 min 12 s"."""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
