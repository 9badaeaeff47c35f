"""External rows: other models' NIfTI predictions of the leaderboard's test patients (parameter
``external``: a list of folders), scored by :func:`npcrepro.scoring.score_folder` exactly as the
runner scores the book's own methods, and added to the run's :class:`Results` as one row each.

An outsider's model may see any images, so each row is paired against the stronger of the run's
U-Net baselines (higher mean DSC). The book's rows do not change: their Holm family stays the book's
methods (see :mod:`.report`). The rows are also written to ``<run>/external.csv`` and listed in the run's
``added_rows.json`` (:data:`npcrepro.engine.results.ADDED_ROWS`), so that every later reader of the run
sees them; the runner's own files (run.json, metrics.csv) are left as it wrote them.

:func:`add_rows` is the general form, which nnU-Net's rows (:mod:`.nnunet`) use: each row's facts
(its paper, dims, input channels and baseline) given, and its half-budget predictions scored too.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pandas as pd

from npcrepro.chapters.leaderboard.methods import BY_KEY, Entry
from npcrepro.errors import ParameterError

__all__ = ["HALF", "entry", "is_external", "add_external", "add_rows"]

#: Sub-folder of a prediction folder with the predictions of the weights at half the budget.
HALF = "half_budget"


def is_external(key: str) -> bool:
    return key not in BY_KEY


def entry(res, key: str) -> Entry:
    """The leaderboard entry of ``key``: one of the book's methods, or a row added by :func:`add_rows`
    (its paper, dims and channels as recorded there: "external", "—" and "own" by default)."""
    if key in BY_KEY:
        return BY_KEY[key]
    info = res.method_info(key)
    return Entry(key, res.label(key), str(info.get("paper", "external")), "", str(info.get("dims", "—")),
                 tuple(info.get("channels", ("own",))), info["baseline"])


def stronger_baseline(res) -> str:
    """The run's U-Net baseline with the higher mean DSC; ParameterError when no U-Net baseline ran."""
    dice = res.metrics.groupby("method")["dice"].mean()
    bases = [k for k in res.methods if k in dice.index and k in BY_KEY and BY_KEY[k].paper == "baseline"]
    if not bases:
        raise ParameterError("external rows are paired against a U-Net baseline: select one in methods")
    return max(bases, key=lambda k: dice[k])


def add_external(res, folders: Sequence[str] | None):
    """``res`` with one more row per prediction folder (named after the folder), each paired against
    the stronger U-Net; ``res`` itself is not changed. ParameterError when no U-Net baseline ran or a
    folder's name is already a row."""
    if not folders:
        return add_rows(res, [], "external.csv")
    base = stronger_baseline(res)
    return add_rows(res, [(folder, {"paper": "external", "baseline": base}) for folder in folders], "external.csv")


def add_rows(res, rows: Sequence[tuple[str, dict]], record: str, label=None, one_model: bool = False):
    """``res`` with one more row per (prediction folder, facts): named after the folder, labelled
    ``label(folder)`` (default its name), with ``facts`` (``paper``, ``baseline``, optionally ``dims``,
    ``channels``) as the row's method info. A folder's predictions count for every training seed of
    the run, or, with ``one_model``, for its first seed only (one trained model: no seed spread).
    Where a folder holds a ``half_budget`` sub-folder, its predictions are the row's half-budget
    scores (:meth:`Results.convergence`). The scored rows are written to ``<run>/<record>`` (and the
    half-budget ones beside it, ``*_half.csv``) and the rows listed under ``record`` in the run's
    :data:`~npcrepro.engine.results.ADDED_ROWS`. Rows that ``res`` holds from an earlier call with
    the same ``record`` (a re-executed chapter) are replaced; no ``rows``: the record's rows are dropped."""
    from npcrepro.engine.results import half_record, record_added_rows
    from npcrepro.paths import write_atomically
    from npcrepro.scoring import external_name, score_folder

    res = _without(res, record)
    infos, full, half = list(res.info.get("methods", [])), [], []
    for folder, facts in rows:
        key = external_name(folder)
        if key in {m["name"] for m in infos}:
            raise ParameterError(f"external folder {folder}: its name {key!r} is already a leaderboard row")

        def scored(where):
            return score_folder(where, res.dataset(), res.test_cases(), res.structures[0], name=key,
                                seeds=(res.seeds or [0])[:1] if one_model else (res.seeds or [0]))

        full.append(scored(folder))
        if (Path(folder) / HALF).is_dir():
            half.append(scored(Path(folder) / HALF))
        infos.append({"name": key, "label": label(folder) if label else key, "record": record,
                      "info": {**facts, "folder": str(Path(folder).resolve())}})
    if not full:
        record_added_rows(res.path, record, [])
        return res
    out = {"metrics": pd.concat([res.metrics, *full], ignore_index=True)}
    target = res.path / record
    write_atomically(target, lambda tmp: pd.concat(full, ignore_index=True).to_csv(tmp, index=False), overwrite=True)
    if half:
        rows_half = pd.concat(half, ignore_index=True)
        write_atomically(res.path / half_record(record), lambda tmp: rows_half.to_csv(tmp, index=False),
                         overwrite=True)
        out["metrics_half"] = (rows_half if res.metrics_half is None
                               else pd.concat([res.metrics_half, rows_half], ignore_index=True))
    record_added_rows(res.path, record, [{k: v for k, v in m.items() if k != "record"}
                                         for m in infos if m.get("record") == record])
    return dataclasses.replace(res, info={**res.info, "methods": infos}, **out)


def _without(res, record: str):
    """``res`` without the rows an earlier :func:`add_rows` added under ``record`` (``res`` itself
    when it has none)."""
    names = {k for k, r in res.added_rows.items() if r == record}
    if not names:
        return res

    def drop(df):
        return df if df is None or not len(df) else df[~df["method"].isin(names)].reset_index(drop=True)

    return dataclasses.replace(res, info={**res.info, "methods": [m for m in res.info.get("methods", [])
                                                                   if m["name"] not in names]},
                               metrics=drop(res.metrics), metrics_half=drop(res.metrics_half))
