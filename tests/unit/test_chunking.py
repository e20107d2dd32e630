"""bot/chunking.py: long Markdown cut into Discord-sized parts that each render on their own.

Fences are checked with an independent, CommonMark-style reader (a fence is closed only by a run of
the same character, at least as long, with no info string), not with the module's own logic.
"""

from __future__ import annotations

import itertools
import random
import re

from bot.chunking import DISCORD_LIMIT, close_fences, split_markdown

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def open_fence(text: str) -> str | None:
    """The opening line of the fence left open at the end of `text`, or None when all are closed."""
    opened: tuple[str, int, str] | None = None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if not match:
            continue
        run, info = match.group(1), match.group(2)
        if opened is None:
            opened = (run[0], len(run), line.strip())
        elif run[0] == opened[0] and len(run) >= opened[1] and not info.strip():
            opened = None
    return opened[2] if opened else None


def assert_renderable(parts: list[str], limit: int) -> None:
    for index, part in enumerate(parts):
        assert len(part) <= limit, f"part {index} has {len(part)} characters (limit {limit})"
        assert open_fence(part) is None, f"part {index} leaves the fence {open_fence(part)!r} open:\n{part}"


def code_block(language: str, lines: int, mark: str = "```") -> tuple[str, list[str]]:
    body = [f"value_{i} = compute({i}, 'some argument text')  # line {i}" for i in range(lines)]
    return f"{mark}{language}\n" + "\n".join(body) + f"\n{mark}", body


def test_short_text_is_one_part_unchanged() -> None:
    text = "Hello **world**\n```py\nprint(1)\n```"
    assert split_markdown(text) == [text]
    assert split_markdown(text, limit=len(text)) == [text]


def test_empty_text_is_one_empty_part() -> None:
    assert split_markdown("") == [""]
    assert close_fences("") == ""


def test_prose_is_cut_on_line_ends_within_the_limit() -> None:
    rng = random.Random(7)
    lines = [" ".join("word" * rng.randint(1, 3) for _ in range(rng.randint(0, 25))) for _ in range(300)]
    text = "\n".join(lines)
    parts = split_markdown(text, limit=500)

    assert len(parts) > 5
    assert_renderable(parts, 500)
    # Cuts fall on line ends: the newline at the cut is the only thing dropped.
    assert "\n".join(parts) == text
    for part, following in itertools.pairwise(parts):  # a part ends only where the next line no longer fits
        assert len(part) + 1 + len(following.split("\n")[0]) > 500 - 4


def test_default_limit_is_discords() -> None:
    text = "\n".join(f"line {i} " + "x" * 60 for i in range(200))
    parts = split_markdown(text)
    assert len(parts) > 1
    assert_renderable(parts, DISCORD_LIMIT)
    assert max(len(p) for p in parts) > DISCORD_LIMIT - 80


def test_open_fence_is_closed_at_the_cut_and_reopened_with_its_language() -> None:
    block, body = code_block("python", 60)
    text = "Here is the script:\n\n" + block + "\n\nRun it with `python app.py`."
    parts = split_markdown(text, limit=400)

    assert len(parts) >= 4
    assert_renderable(parts, 400)
    inside = parts[1:-1]  # cut on both sides, inside the block
    assert inside and all(p.startswith("```python\n") and p.endswith("\n```") for p in inside)
    assert parts[0].endswith("\n```") and parts[-1].startswith("```python\n")
    # Every line of code appears once, in order: nothing lost or repeated at the cuts.
    code_lines = [line for p in parts for line in p.split("\n") if line.startswith("value_")]
    assert code_lines == body
    assert parts[-1].endswith("Run it with `python app.py`.")


def test_tilde_fences_are_closed_and_reopened_with_tildes() -> None:
    block, body = code_block("bash", 40, mark="~~~")
    parts = split_markdown("Steps:\n" + block + "\ndone", limit=300)

    assert len(parts) >= 3
    assert_renderable(parts, 300)
    assert all(p.endswith("\n~~~") for p in parts[:-1])
    assert all(p.startswith("~~~bash\n") for p in parts[1:])
    assert [line for p in parts for line in p.split("\n") if line.startswith("value_")] == body


def test_a_line_longer_than_the_limit_is_cut_hard() -> None:
    line = "".join(str(i % 10) for i in range(1000))
    parts = split_markdown(line, limit=300)
    assert len(parts) == 4
    assert all(len(p) <= 300 for p in parts)
    assert "".join(parts) == line

    fenced = "```\n" + line + "\n```"
    parts = split_markdown(fenced, limit=300)
    assert_renderable(parts, 300)
    code = [piece for p in parts for piece in p.split("\n") if not piece.startswith("```")]
    assert "".join(code) == line


def test_earlier_parts_never_change_as_the_text_streams_in() -> None:
    rng = random.Random(3)
    pieces: list[str] = []
    for i in range(25):
        pieces.append(" ".join(["lorem"] * rng.randint(1, 40)))
        if i % 4 == 1:
            pieces.append(code_block(rng.choice(["python", "js", ""]), rng.randint(2, 12),
                                     mark=rng.choice(["```", "~~~", "````"]))[0])
        if i % 9 == 0:
            pieces.append("z" * rng.randint(300, 700))  # a line longer than the limit
    text = "\n".join(pieces)
    final = split_markdown(text, limit=300)
    assert len(final) > 10

    for end in range(0, len(text) + 1, 3):
        parts = split_markdown(text[:end], limit=300)
        assert_renderable(parts[:-1], 300)
        assert parts[:-1] == final[:len(parts) - 1], f"a finished part changed when the text grew to {end}"
        # The part still streaming renders once close_fences() closes what it left open.
        assert open_fence(close_fences(parts[-1])) is None


def test_close_fences_closes_a_fence_left_open_by_streaming_text() -> None:
    streaming = "Here:\n```js\nconst a = 1;\nconst b"
    closed = close_fences(streaming)
    assert closed == streaming + "\n```"
    assert open_fence(closed) is None

    tilde = close_fences("~~~\nls -la")
    assert tilde.endswith("\n~~~") and open_fence(tilde) is None

    balanced = "```py\nx = 1\n```\nafter"
    assert close_fences(balanced) == balanced
    assert close_fences("no code at all") == "no code at all"


def test_text_ending_inside_an_open_fence_splits_into_renderable_parts() -> None:
    block, _ = code_block("rust", 50)
    text = "Partial answer:\n" + block.removesuffix("\n```")  # the model stopped inside the block
    parts = split_markdown(text, limit=350)
    assert_renderable(parts[:-1], 350)
    assert open_fence(parts[-1]) == "```rust"
    assert parts[-1].startswith("```rust\n")
    last = close_fences(parts[-1])
    assert open_fence(last) is None and len(last) <= 350 + 4


def test_longer_fences_around_nested_ones_stay_balanced() -> None:
    """A ```` block showing Markdown that holds ``` blocks (how models quote a README)."""
    inner, _ = code_block("python", 8)
    readme = "\n".join(["# Project", inner, "Install it:", inner, "That is all."] * 4)
    text = "Your README.md:\n````markdown\n" + readme + "\n````\nSave it."
    parts = split_markdown(text, limit=400)

    assert len(parts) >= 3
    assert_renderable(parts, 400)
    assert all(p.startswith("````markdown\n") for p in parts[1:]), "reopened with the same fence and language"
    assert open_fence(close_fences("````markdown\n# Project\n```python\nx = 1\n```\n")) is None


def test_a_fence_of_one_kind_is_not_closed_by_the_other_kind() -> None:
    """Inside a ``` block a ~~~ line is code (and vice versa)."""
    body = "\n".join(["~~~", *[f"echo {i}" for i in range(40)], "~~~"])
    text = "```sh\n" + body + "\n```\nend"
    parts = split_markdown(text, limit=200)
    assert_renderable(parts, 200)
    assert all(p.startswith("```sh\n") for p in parts[1:])
    assert close_fences("```\n~~~\n") == "```\n~~~\n\n```"
