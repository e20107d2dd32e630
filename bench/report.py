"""How every bench ends: a table of figures with their targets, then the figures as one JSON line."""

from __future__ import annotations

import json
from collections.abc import Mapping


def print_figures(figures: Mapping[str, object], targets: Mapping[str, str]) -> None:
    print(f"{'measure':<22}{'value':>10}  target")
    for name, value in figures.items():
        print(f"{name:<22}{value!s:>10}  {targets.get(name, '')}")
    print(json.dumps(dict(figures)))  # the LAST line: what tools and the README read
