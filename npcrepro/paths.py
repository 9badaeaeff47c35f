"""Where things are: the repository, the optional real-data extracts, run folders."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

from npcrepro.errors import DataError, ParameterError

#: Environment variable naming the folder that holds the real extracts (openkbp-subset/, ...).
DATA_ENV = "NPCREPRO_SHARED_DATA"


def repo_root() -> Path:
    """The source checkout (the folder holding pyproject.toml), or the current directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def shared_data(sub: str | None = None) -> Path | None:
    """The real-data folder, or one of its sub-folders, or None when it is not on this machine.

    Looked up in ``$NPCREPRO_SHARED_DATA``, then ``<repo>/../shared/data``. The data are never copied
    into the repository; a user points at their own copy with the environment variable or with a
    notebook's ``data`` parameter.
    """
    candidates = [os.environ.get(DATA_ENV), repo_root().parent / "shared" / "data"]
    for c in candidates:
        if c and Path(c).is_dir():
            p = Path(c) / sub if sub else Path(c)
            return p if p.exists() else None
    return None


def env_count(name: str, minimum: int = 0) -> int | None:
    """The integer in environment variable ``name`` (a count of processes, say), or None when it is
    unset or empty; anything but an integer >= ``minimum`` raises ParameterError in one line."""
    value = os.environ.get(name, "")
    if not value:
        return None
    if not value.isdigit() or int(value) < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], *,
                     overwrite: bool = False) -> Path:
    """Create ``path`` through ``write(tmp)`` on a temporary sibling, renamed onto ``path`` when
    ``write`` returns (a reader never sees a half-written file; a failure leaves nothing behind).

    Raises DataError when ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"{path}: exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
