"""Seeded case splits (leave-one-out, k-fold, holdout), saved to and read from JSON.

A split is a list of :class:`Fold` (``train``, ``val``, ``test`` case-name lists). Splits are always
by case (patient): no patient's slices or patches ever sit on both sides.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from npcrepro.errors import DataError


@dataclass
class Fold:
    """One train/validation/test partition of case names."""

    train: list[str]
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for name in getattr(self, part):
                if name in seen:
                    raise DataError(f"case {name!r} is in both {seen[name]} and {part}")
                seen[name] = part


def _val_count(n: int, val_fraction: float | None, n_val: int | None) -> int:
    if n_val is not None:
        if not 0 <= n_val < n:
            raise DataError(f"n_val={n_val} leaves no training cases out of {n}")
        return n_val
    if val_fraction is None or val_fraction == 0:
        return 0
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return max(1, int(round(n * val_fraction)))


def _split_train_val(rest: list[str], rng: np.random.Generator, val_fraction, n_val) -> tuple[list, list]:
    nv = _val_count(len(rest), val_fraction, n_val)
    order = [rest[i] for i in rng.permutation(len(rest))]
    return sorted(order[nv:]), sorted(order[:nv])


def _check_cases(cases: Sequence[str], need: int) -> list[str]:
    cases = list(cases)
    if len(set(cases)) != len(cases):
        raise DataError("case names are not unique")
    if len(cases) < need:
        raise DataError(f"need at least {need} cases for this split, got {len(cases)}")
    return sorted(cases)


def leave_one_out(cases: Sequence[str], *, seed: int = 0, val_fraction: float | None = None,
                  n_val: int | None = None) -> list[Fold]:
    """One fold per case, that case as the test set (li2018's LOOCV)."""
    cases = _check_cases(cases, 2)
    rng = np.random.default_rng(seed)
    folds = []
    for c in cases:
        train, val = _split_train_val([x for x in cases if x != c], rng, val_fraction, n_val)
        folds.append(Fold(train, val, [c]))
    return folds


def kfold(cases: Sequence[str], k: int = 5, *, seed: int = 0, val_fraction: float | None = None,
          n_val: int | None = None) -> list[Fold]:
    """Shuffled k-fold: every case is tested exactly once; ``val`` is drawn from the rest."""
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    cases = _check_cases(cases, k)
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    parts = np.array_split(np.arange(len(cases)), k)
    folds = []
    for idx in parts:
        test = sorted(order[i] for i in idx)
        train, val = _split_train_val([c for c in cases if c not in test], rng, val_fraction, n_val)
        folds.append(Fold(train, val, test))
    return folds


def holdout(cases: Sequence[str], *, n_test: int | float, n_val: int | float = 0,
            seed: int = 0) -> list[Fold]:
    """A single random train/val/test split; counts or fractions (e.g. xue2020's 120/15/15)."""
    cases = _check_cases(cases, 2)
    n = len(cases)
    nt = int(round(n * n_test)) if isinstance(n_test, float) else int(n_test)
    nv = int(round(n * n_val)) if isinstance(n_val, float) else int(n_val)
    if nt < 1 or nt + nv >= n:
        raise DataError(f"holdout of {nt} test + {nv} val leaves no training cases out of {n}")
    order = [cases[i] for i in np.random.default_rng(seed).permutation(n)]
    return [Fold(sorted(order[nt + nv:]), sorted(order[nt:nt + nv]), sorted(order[:nt]))]


def make_splits(cases: Sequence[str], scheme: str, *, seed: int = 0, k: int = 5,
                val_fraction: float | None = None, n_val: int | None = None,
                n_test: int | float = 0.2) -> list[Fold]:
    """Dispatch by name: ``"loocv"``, ``"kfold"`` or ``"holdout"``."""
    if scheme == "loocv":
        return leave_one_out(cases, seed=seed, val_fraction=val_fraction, n_val=n_val)
    if scheme == "kfold":
        return kfold(cases, k, seed=seed, val_fraction=val_fraction, n_val=n_val)
    if scheme == "holdout":
        return holdout(cases, n_test=n_test, n_val=n_val or (val_fraction or 0), seed=seed)
    raise DataError(f"unknown split scheme {scheme!r} (valid: loocv, kfold, holdout)")


def save_splits(folds: Sequence[Fold], path: str | os.PathLike) -> Path:
    """Write folds as a JSON list of {train, val, test} objects."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps([asdict(f) for f in folds], indent=1), encoding="utf-8")
    return p


def load_splits(path: str | os.PathLike, cases: Sequence[str] | None = None) -> list[Fold]:
    """Read folds from JSON; with ``cases``, check every named case exists."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: splits file not found")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        folds = [Fold(list(f["train"]), list(f.get("val", [])), list(f.get("test", []))) for f in raw]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: not a splits file ({exc.__class__.__name__}: {exc})") from None
    if cases is not None:
        known = set(cases)
        for i, f in enumerate(folds):
            unknown = sorted(set(f.train + f.val + f.test) - known)
            if unknown:
                raise DataError(f"{p}: fold {i} names unknown cases {unknown[:5]}")
    return folds
