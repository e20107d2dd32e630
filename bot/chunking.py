"""Cutting long Markdown into Discord-sized parts without breaking code fences.

A cut inside a ``` block closes the fence at the end of the part and reopens it (same language)
at the start of the next, so every part renders on its own. Cuts fall on line ends when
possible. The cut is a function of the text before it only, so a part that has been followed by
another never changes as more text streams in.
"""

from __future__ import annotations

import re

DISCORD_LIMIT = 2000
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")


def _fence_after(lines: list[str], state: str | None) -> str | None:
    """The open fence (its opening line) after these lines, given the one open before them."""
    for line in lines:
        match = _FENCE.match(line)
        if match:
            state = None if state is not None else match.group(1) + match.group(2).strip()
    return state


def split_markdown(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Parts of at most `limit` characters, each with balanced code fences."""
    parts: list[str] = []
    opened: str | None = None  # fence open at the start of the remaining text
    rest = text
    while True:
        prefix = f"{opened}\n" if opened else ""
        if len(prefix) + len(rest) <= limit:
            parts.append(prefix + rest)
            return parts
        room = limit - len(prefix) - 4  # room for a closing "\n```"
        cut = rest.rfind("\n", 0, room + 1)
        if cut <= 0:
            cut = room  # one very long line: a hard cut
        body, rest = rest[:cut], rest[cut:].removeprefix("\n")
        still_open = _fence_after(body.split("\n"), opened)
        fence_mark = still_open.lstrip()[:3] if still_open else ""
        parts.append(prefix + body + (f"\n{fence_mark}" if still_open else ""))
        opened = still_open


def close_fences(text: str) -> str:
    """Close a fence left open by text that is still streaming, so a partial message renders."""
    opened = _fence_after(text.split("\n"), None)
    return f"{text}\n{opened.lstrip()[:3]}" if opened else text
