"""The folds a chapter's run used, read back from its run folder (to export them, for instance as
nnU-Net's ``splits_final.json``: :mod:`npcrepro.datasets.nnunet_raw`).

Every run records its split as ``splits.json`` in its run folder (the experiment runner).
:func:`recorded_folds` reads it;
:func:`chapter_run` finds a chapter's newest finished run.
"""
from __future__ import annotations

import os
from pathlib import Path

from npcrepro.datasets.splits import Fold, load_splits
from npcrepro.errors import DataError

__all__ = ["recorded_folds", "chapter_run"]


def recorded_folds(path: str | os.PathLike) -> list[Fold]:
    """The folds of a run folder (its ``splits.json``), or of a splits file itself."""
    p = Path(path)
    if p.is_dir():
        if not (p / "splits.json").exists():
            raise DataError(f"{p}: records no folds (no splits.json)")
        p = p / "splits.json"
    elif not p.is_file():
        raise DataError(f"{p}: neither a run folder nor a splits file")
    return load_splits(p)


def chapter_run(chapter: str, runs: str | os.PathLike = "runs", profile: str = "cpu", *,
                track: str | None = None) -> Path:
    """The newest finished run folder of ``chapter`` under ``<runs>/<profile>/<chapter>/`` (its name
    ending in ``-<track>`` when ``track`` is given, e.g. the leaderboard's ``phantom``)."""
    from npcrepro.engine.runs import find_runs

    found = [r for r in find_runs(runs, profile, chapter) if (r / "DONE").exists()
             and (track is None or r.name.endswith(f"-{track}"))]
    if not found:
        where = Path(runs) / profile / chapter
        raise DataError(f"{where}: no finished run{f' of track {track!r}' if track else ''} (run "
                        f"`npcrepro run {chapter} --profile {profile}` first, or pass a run folder or a "
                        "splits file)")
    return found[-1]
