"""Where things are: the repository, the optional real-data extracts, run folders."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from npcrepro.errors import DataError, ParameterError

#: Environment variable naming the folder that holds the real extracts (openkbp-subset/, ...).
DATA_ENV = "NPCREPRO_SHARED_DATA"

T = TypeVar("T")


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


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory lock on the file ``path`` (created if missing) for the ``with`` block, so
    processes on this machine (DDP ranks, parallel notebooks, pytest workers) take turns. Not POSIX
    (no ``fcntl``): no locking."""
    with open(path, "a", encoding="utf-8") as fh:
        try:
            import fcntl
        except ImportError:
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(folder: str | os.PathLike, load: Callable[[Path], T | None], make: Callable[[Path], T]) -> T:
    """A cached folder, made at most once however many processes ask for it at the same time.

    ``load(folder)`` returns the cached value, or None when the folder is missing or stale;
    ``make(folder)`` writes the folder (atomically: it must rename a complete folder into place) and
    returns the value. ``make`` runs under :func:`exclusive_lock` on the sibling file
    ``.<name>.lock``; a process that waited on the lock finds the folder made and loads it.
    """
    folder = Path(folder)
    value = load(folder)
    if value is not None:
        return value
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.with_name(f".{folder.name}.lock")):
        value = load(folder)
        return value if value is not None else make(folder)


def shown(path: str | os.PathLike) -> str:
    """``path`` as a page or a message shows it: relative to the repository root when it lies inside it,
    else relative to the working directory when inside that, else as given (a page then names
    ``runs/cpu/...``, not the folder of the machine that built it)."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base in (repo_root(), Path.cwd()):
        try:
            return str(p.resolve().relative_to(base.resolve()))
        except (ValueError, OSError):
            continue
    return str(p)


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar (the notebook widget in a live kernel, text in a terminal); none at all where
    ``NPCREPRO_PROGRESS_BARS=0``, which the book sets for the chapters it executes: in a static page
    the widget would be a dead control (their ``[progress]`` lines still say how far a run is)."""
    from tqdm.auto import tqdm

    if os.environ.get("NPCREPRO_PROGRESS_BARS") == "0":
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
