"""External rows: other models' NIfTI predictions of the leaderboard's test patients (parameter
``external``: a list of folders), scored by :func:`npcrepro.scoring.score_folder` exactly as the
runner scores the book's own methods, and added to the run's :class:`Results` as one row each.

An outsider's model may see any images, so each row is paired against the stronger of the run's
U-Net baselines (higher mean DSC). The book's rows do not change: their Holm family stays the book's
methods (see :mod:`.report`). The rows are also written to ``<run>/external.csv``; the runner's own
files (run.json, metrics.csv) are left as it wrote them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pandas as pd

from npcrepro.chapters.leaderboard.methods import BY_KEY, Entry
from npcrepro.errors import ParameterError

__all__ = ["entry", "is_external", "add_external"]


def is_external(key: str) -> bool:
    return key not in BY_KEY


def entry(res, key: str) -> Entry:
    """The leaderboard entry of ``key``: one of the book's methods, or an external row of ``res``."""
    if key in BY_KEY:
        return BY_KEY[key]
    info = res.method_info(key)
    return Entry(key, res.label(key), "external", "", "—", ("own",), info["baseline"])


def add_external(res, folders: Sequence[str] | None):
    """``res`` with one more row per prediction folder (named after the folder); ``res`` itself is
    not changed. ParameterError when no U-Net baseline ran or a folder's name is already a row."""
    from npcrepro.paths import write_atomically
    from npcrepro.scoring import external_name, score_folder

    if not folders:
        return res
    dice = res.metrics.groupby("method")["dice"].mean()
    bases = [k for k in res.methods if k in dice.index and k in BY_KEY and BY_KEY[k].paper == "baseline"]
    if not bases:
        raise ParameterError("external rows are paired against a U-Net baseline: select one in methods")
    base = max(bases, key=lambda k: dice[k])
    infos, parts = list(res.info.get("methods", [])), []
    for folder in folders:
        key = external_name(folder)
        if key in {m["name"] for m in infos}:
            raise ParameterError(f"external folder {folder}: its name {key!r} is already a leaderboard row")
        parts.append(score_folder(folder, res.dataset(), res.test_cases(), res.structures[0], name=key,
                                  seeds=res.seeds or [0]))
        infos.append({"name": key, "label": key,
                      "info": {"paper": "external", "baseline": base, "folder": str(Path(folder).resolve())}})
    rows = pd.concat(parts, ignore_index=True)
    write_atomically(res.path / "external.csv", lambda tmp: rows.to_csv(tmp, index=False), overwrite=True)
    return dataclasses.replace(res, info={**res.info, "methods": infos},
                               metrics=pd.concat([res.metrics, rows], ignore_index=True))
