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


def _mark(fence: str) -> str:
    """The run of backticks or tildes of a fence's opening line ("````md" -> "````")."""
    line = fence.lstrip()
    return line[:len(line) - len(line.lstrip(line[0]))]


def _fence_after(lines: list[str], state: str | None) -> str | None:
    """The open fence (its opening line) after these lines, given the one open before them. As in
    CommonMark, only a run of the same character, at least as long and without info string, closes it."""
    for line in lines:
        match = _FENCE.match(line)
        if not match:
            continue
        if state is None:
            state = match.group(1) + match.group(2).strip()
        elif match.group(1).startswith(_mark(state)) and not match.group(2).strip():
            state = None
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
        reserve = 4  # room for a closing "\n```"
        while True:
            room = limit - len(prefix) - reserve
            cut = rest.rfind("\n", 0, room + 1)
            if cut <= 0:
                cut = room  # one very long line: a hard cut
            body = rest[:cut]
            still_open = _fence_after(body.split("\n"), opened)
            closing = f"\n{_mark(still_open)}" if still_open else ""
            if len(closing) <= reserve:
                break
            reserve = len(closing)  # a longer fence (````) takes more room to close
        rest = rest[cut:].removeprefix("\n")
        parts.append(prefix + body + closing)
        opened = still_open


def close_fences(text: str) -> str:
    """Close a fence left open by text that is still streaming, so a partial message renders."""
    opened = _fence_after(text.split("\n"), None)
    return f"{text}\n{_mark(opened)}" if opened else text
