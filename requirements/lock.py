"""Regenerates requirements/lock.txt: exact versions of everything `llm[extras]` installs.

    python requirements/lock.py dev hf interop > requirements/lock.txt

Walks the installed distributions' requirement metadata from `llm` with the given extras,
so the lock pins the environment the tests were run in (not a fresh resolution).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement


def closure(root: str, extras: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    todo = [(root, tuple(extras))]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = metadata.distribution(name)
        if name != root:
            pins[canonical(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            env_ok = any(
                req.marker is None or req.marker.evaluate({**default_environment(), "extra": e})
                for e in (*wanted, "")
            )
            if env_ok and canonical(req.name) != canonical(root):
                todo.append((canonical(req.name), tuple(sorted(req.extras))))
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


if __name__ == "__main__":
    pins = closure("llm", sys.argv[1:])
    print("# Exact versions CI installs: pip install -c requirements/lock.txt -e '.[...]'")
    print("# Regenerate: python requirements/lock.py " + " ".join(sys.argv[1:]))
    for name in sorted(pins):
        print(f"{name}=={pins[name].split('+')[0]}")  # local labels (+cpu) dropped
