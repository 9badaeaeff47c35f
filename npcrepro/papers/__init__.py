"""The five papers' reported numbers and stated recipes: the book's single source of paper numbers.

Every number a paper reports is transcribed once, in that paper's module (``paper.py`` in its chapter
folder, e.g. :mod:`npcrepro.chapters.li2018.paper`; read by :func:`get`), as a
:class:`Reported` record with the table/figure/section it comes from. Chapters read them through
:func:`reported`, :func:`headline`, :func:`info` and :func:`citation` and never hard-code them.

Each paper module defines

* ``INFO`` -- a :class:`PaperInfo` (citation, data, protocol, the training ``recipe`` as stated);
* ``REPORTED`` -- the paper's own results (and comparison rows of its own tables);
* ``CITED`` -- numbers the paper quotes from *other* work in its prose (off by default in
  :func:`reported`, ``include_cited=True`` adds them);
* ``CLAIMS`` -- derived statements the text makes about its tables ("improves DSC by 6.39%"), as
  :class:`Claim` records that the tests check against the tables;
* ``HEADLINE`` -- ``(table, method[, metrics])`` of the row :func:`headline` returns;
* ``HEADLINE_METRIC`` (optional) -- ``(metric, scope)``: what the headline DSC measures when it is not
  a hard DSC of the tumour (luo2020: the soft DSC of its Eq. 4 over 14 structures), so that the book
  sets a reproduction beside it only with that said (:func:`headline_metric`);
* ``METHOD_ALIASES`` -- short names accepted by the ``method`` filter of :func:`reported`.

The text authority is the PDF extraction in ``<repo>/../shared/papers/*.txt``
(:func:`text_path`); the digest ``README.md`` beside it is not an authority.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from npcrepro import pages
from npcrepro.errors import ParameterError

__all__ = [
    "PAPERS",
    "METRICS",
    "LOWER_IS_BETTER",
    "TEXT_FILES",
    "PaperInfo",
    "Reported",
    "Claim",
    "entry",
    "get",
    "info",
    "reported",
    "citation",
    "headline",
    "claims",
    "text_path",
]

#: Short keys of the papers (pages of kind "paper", :mod:`npcrepro.pages`), in the book's order.
PAPERS: tuple[str, ...] = pages.papers()

#: Canonical metric names of :attr:`Reported.metric`.
METRICS: tuple[str, ...] = (
    "dsc",
    "jaccard",
    "precision",
    "recall",
    "f1",
    "percent_match",
    "corresponding_ratio",
    "assd",
    "hd",
    "hd95",
    "auc",
    "ap",
    "dice_loss",
    "volume_cm3",
    "seconds_per_patient",
    "ms_per_slice",
    "p_value",
    "train_hours",
)

#: Metrics that are fractions in [0, 1].
UNIT_INTERVAL: frozenset[str] = frozenset(
    {"dsc", "jaccard", "precision", "recall", "f1", "percent_match", "auc", "ap", "dice_loss", "p_value"}
)

#: Metrics where lower is better (a claimed improvement is a reduction).
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"assd", "hd", "hd95", "dice_loss", "seconds_per_patient", "ms_per_slice", "train_hours", "p_value"}
)

#: File name of each paper's full text in ``<repo>/../shared/papers`` (its ``page.toml``'s ``text``).
TEXT_FILES: dict[str, str] = {k: pages.get(k).text for k in PAPERS}

COLUMNS: tuple[str, ...] = (
    "paper", "table", "method", "metric", "value", "sd", "low", "high", "unit", "case", "note", "source",
)


@dataclass(frozen=True)
class Reported:
    """One number as the paper reports it.

    ``value`` is the mean (or the single value); ``sd`` the printed standard deviation; ``low`` /
    ``high`` a printed range (or a bound: ``high`` alone for "p < 0.001"). ``case`` names a patient
    or figure panel for per-case rows. ``printed`` (not a DataFrame column) holds the literal text
    fragments when the number is not printed as a plain decimal (percentages, "10 to 20 minutes");
    the tests look those up in the paper text instead of the rendered value.
    """

    table: str
    method: str
    metric: str
    value: float
    sd: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    note: str = ""
    case: str | None = None
    printed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ParameterError(f"Reported metric {self.metric!r} is not canonical; use one of {', '.join(METRICS)}")
        for name in ("value", "sd", "low", "high"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ParameterError(f"Reported {self.method}/{self.metric}: {name}={v!r} is not a finite number")


@dataclass(frozen=True)
class Claim:
    """A derived statement of the text about its own numbers, e.g. "improves DSC by 6.39%".

    ``value`` is the claimed difference ``better - worse`` in the metric's own units (a claimed
    "6.39%" in DSC is 0.0639; for losses and distances the claimed *reduction*, positive).
    ``better`` and ``worse`` are ``(table, method)`` of the two :class:`Reported` rows.
    ``tolerance`` is half the last printed digit (or the width of a printed range).
    """

    where: str
    statement: str
    metric: str
    value: float
    better: tuple[str, str]
    worse: tuple[str, str]
    tolerance: float = 5e-5
    printed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperInfo:
    """What a paper is and what it states about its data, protocol and training recipe.

    ``recipe`` maps a recipe item (``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
    ``schedule``, ``batch_size``, ``epochs``/``iterations``, ``loss``, ``augmentation``,
    ``input_size``, ``preprocessing``, ...) to ``{"value": ..., "source": ..., "note": ...}`` (see
    :func:`entry`); ``value`` is ``None`` where the paper leaves the item open. Treat the dicts as
    read-only.
    """

    key: str
    short_title: str
    title: str
    citation: str
    journal: str
    year: int
    doi: str | None
    arxiv: str | None
    modality: str
    task: str
    dataset: dict[str, Any]
    protocol: dict[str, Any]
    recipe: dict[str, dict[str, Any]]
    architecture: str = ""
    notes: tuple[str, ...] = ()


def entry(value: Any, source: str = "", note: str = "") -> dict[str, Any]:
    """One recipe item: the stated ``value`` (``None`` = left open), where it is stated, a remark."""
    return {"value": value, "source": source, "note": note}


# --------------------------------------------------------------------------------------------
# access


def _check_key(key: str) -> str:
    if key not in PAPERS:
        raise ParameterError(f"unknown paper {key!r}; valid keys: {', '.join(PAPERS)}")
    return key


def get(key: str) -> ModuleType:
    """The paper's module (``INFO``, ``REPORTED``, ``CITED``, ``CLAIMS``, ...)."""
    return pages.data_module(_check_key(key), "paper")


def info(key: str) -> PaperInfo:
    """The paper's :class:`PaperInfo`."""
    return get(key).INFO


def citation(key: str) -> str:
    """The paper's full citation string."""
    return info(key).citation


def claims(key: str) -> list[Claim]:
    """The text's derived claims about its own tables (may be empty)."""
    return list(getattr(get(key), "CLAIMS", []))


def _records(key: str, include_cited: bool) -> list[Reported]:
    mod = get(key)
    recs = list(mod.REPORTED)
    if include_cited:
        recs += list(getattr(mod, "CITED", []))
    return recs


def _method_matches(key: str, method: str, wanted: str) -> bool:
    aliases = {k.casefold(): v for k, v in getattr(get(key), "METHOD_ALIASES", {}).items()}
    w = wanted.casefold()
    target = aliases.get(w, wanted).casefold()
    return method.casefold() in (w, target)


def reported(
    key: str | None = None,
    *,
    table: str | None = None,
    method: str | None = None,
    metric: str | None = None,
    include_cited: bool = False,
):
    """The reported numbers as a :class:`pandas.DataFrame`.

    Columns: ``paper, table, method, metric, value, sd, low, high, unit, case, note, source``
    (``source`` is always ``"reported"``). ``key=None`` gives all five papers. ``table`` and
    ``method`` match case-insensitively; ``method`` also accepts the paper's ``METHOD_ALIASES``
    (e.g. ``"MMFNet"`` for chen2020's full model, ``"SVM"`` for li2018's Table 3 row). ``metric``
    must be canonical (:data:`METRICS`). Numbers quoted from other work in prose are added with
    ``include_cited=True``.
    """
    import pandas as pd

    keys = PAPERS if key is None else (_check_key(key),)
    if metric is not None and metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    rows = []
    for k in keys:
        for r in _records(k, include_cited):
            if table is not None and r.table.casefold() != table.casefold():
                continue
            if method is not None and not _method_matches(k, r.method, method):
                continue
            if metric is not None and r.metric != metric:
                continue
            rows.append(
                {
                    "paper": k, "table": r.table, "method": r.method, "metric": r.metric,
                    "value": float(r.value), "sd": r.sd, "low": r.low, "high": r.high,
                    "unit": r.unit, "case": r.case, "note": r.note, "source": "reported",
                }
            )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("sd", "low", "high"):
        df[c] = df[c].astype(float)
    return df


def headline(key: str) -> dict[tuple[str, str], float]:
    """The paper's headline numbers: ``{(method, metric): value}`` of its proposed method's summary
    row (the row named by the module's ``HEADLINE``: ``(table, method)`` or ``(table, method,
    metrics)``), in the paper's metric order."""
    mod = get(key)
    table, method, *rest = mod.HEADLINE
    metrics = rest[0] if rest else None
    out: dict[tuple[str, str], float] = {}
    for r in mod.REPORTED:
        if r.table == table and r.method == method and r.case is None:
            if metrics is None or r.metric in metrics:
                out[(r.method, r.metric)] = float(r.value)
    return out


def headline_metric(key: str) -> tuple[str, str]:
    """``(metric, scope)`` of the paper's headline DSC: the module's ``HEADLINE_METRIC``, else
    ``("dice", "")`` (a hard DSC; :func:`npcrepro.summary.metric_words` names them)."""
    return tuple(getattr(get(key), "HEADLINE_METRIC", ("dice", "")))


def text_path(key: str) -> Path | None:
    """Path of the paper's full-text extraction, or None when ``../shared/papers`` is absent."""
    from npcrepro.paths import repo_root

    p = repo_root().parent / "shared" / "papers" / TEXT_FILES[_check_key(key)]
    return p if p.is_file() else None
