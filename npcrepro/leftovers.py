"""What a killed process leaves behind, found and removed on request (``npcrepro leftovers``).

Every writer of the project writes to a hidden temporary name and renames it when done, and removes
it when it fails; only a process killed outright (SIGKILL, a lost machine) leaves one behind:

* ``.checkpoint_<which>.pt.tmp<pid>``: a checkpoint being written (:mod:`npcrepro.engine.checkpoints`);
* ``.<chapter>.<pid>-<hex>.running.ipynb`` and its ``.kernel.log``: a book page being executed
  (:mod:`npcrepro.book`);
* ``.<folder>.writing-<hex>``: a dataset being written (:func:`npcrepro.datasets.write_dataset`), and
  ``.<folder>.<hex>``: a phantom cohort being generated (:func:`npcrepro.profiles.load_data`).

An entry that names its process is a leftover once that process is gone; one that does not is a
leftover once it is older than :data:`MIN_AGE_S` (a writer still at work keeps touching it).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["Leftover", "find", "remove", "MIN_AGE_S"]

#: Age (seconds since the last change) after which an entry that names no process is a leftover.
MIN_AGE_S = 3600.0

_PATTERNS = (
    ("checkpoint being written", re.compile(r"^\.checkpoint_\w+\.pt\.tmp(?P<pid>\d+)$")),
    ("page being executed", re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.running(\.ipynb|\.kernel\.log)$")),
    ("dataset being written", re.compile(r"^\..+\.writing-[0-9a-f]{8}$")),
    ("phantom cohort being generated", re.compile(r"^\.phantom-.+\.[0-9a-f]{8}$")),
)


@dataclass(frozen=True)
class Leftover:
    """One leftover: its ``path``, what it was (``kind``) and its size in bytes."""

    path: Path
    kind: str
    size: int


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def find(roots: Iterable[str | os.PathLike], *, min_age_s: float = MIN_AGE_S,
         now: float | None = None) -> list[Leftover]:
    """The leftovers under ``roots`` (run roots, the book's folder), in path order."""
    now = time.time() if now is None else now
    out = []
    for root in [Path(r) for r in roots if Path(r).is_dir()]:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                for kind, pattern in _PATTERNS:
                    m = pattern.match(name)
                    if not m:
                        continue
                    p = Path(dirpath) / name
                    pid = m.groupdict().get("pid")
                    gone = (not _alive(int(pid))) if pid else now - p.stat().st_mtime >= min_age_s
                    if gone:
                        out.append(Leftover(p, kind, _size(p)))
                    break
            dirnames[:] = [d for d in dirnames if not any(pat.match(d) for _, pat in _PATTERNS)]
    return sorted(out, key=lambda x: str(x.path))


def remove(leftovers: Iterable[Leftover]) -> int:
    """Delete ``leftovers``; returns how many were removed."""
    n = 0
    for item in leftovers:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        n += 1
    return n
