"""The folds a chapter's run used, read back from its run folder (to export them, for instance as
nnU-Net's ``splits_final.json``: :mod:`npcrepro.datasets.nnunet_raw`).

Every run records its split. Cross-validating chapters write ``splits.json`` through
:func:`npcrepro.engine.make_folds` (in the run folder, or in a sub-run such as li2018's
``working/``); a hold-out chapter writes one fold; the leaderboard records its hold-out as
``train`` and ``test`` in ``summary.json``. :func:`recorded_folds` finds them; :func:`chapter_run`
finds a chapter's newest finished run.
"""
from __future__ import annotations

import os
from pathlib import Path

from npcrepro.datasets.splits import Fold, load_splits
from npcrepro.errors import DataError

__all__ = ["recorded_folds", "chapter_run"]


def _is_prefix(short: list[Fold], long: list[Fold]) -> bool:
    return len(short) <= len(long) and all(
        (a.train, a.val, a.test) == (b.train, b.val, b.test) for a, b in zip(short, long))


def recorded_folds(path: str | os.PathLike) -> list[Fold]:
    """The folds recorded in a run folder, or read from a splits file.

    A run folder may hold several ``splits.json`` (one per sub-run); when one of them extends all the
    others (sub-runs that ran only the first folds), that one is returned, else DataError lists them.
    A run without ``splits.json`` but with ``train``/``test`` in ``summary.json`` (the leaderboard)
    gives one fold (no validation cases).
    """
    import json

    p = Path(path)
    if p.is_file():
        return load_splits(p)
    if not p.is_dir():
        raise DataError(f"{p}: neither a run folder nor a splits file")
    files = sorted(p.rglob("splits.json"), key=lambda f: (len(f.relative_to(p).parts), str(f)))
    if files:
        found = [(f, load_splits(f)) for f in files]
        longest = max(found, key=lambda x: len(x[1]))
        if all(_is_prefix(folds, longest[1]) for _, folds in found):
            return longest[1]
        raise DataError(f"{p}: holds different splits ({', '.join(str(f.relative_to(p)) for f in files)}); "
                        "pass one of these files")
    summary = p / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text(encoding="utf-8"))
        if s.get("train") and s.get("test"):
            return [Fold(sorted(s["train"]), [], sorted(s["test"]))]
    raise DataError(f"{p}: records no folds (no splits.json, no train/test in summary.json)")


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
