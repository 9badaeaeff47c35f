"""Seeded case splits (leave-one-out, k-fold, holdout), saved to and read from JSON.

A split is a list of :class:`Fold` (``train``, ``val``, ``test`` case-name lists). These splits are
by case (patient): no patient's slices or patches ever sit on both sides. :func:`slice_kfold` is the
one exception, kept for audits: a k-fold over slices, where slices of one patient fall on both sides
(what a paper that cross-validates over a pooled list of 2D slices does).
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

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


# ------------------------------------------------------------------------------ slice-level k-fold
@dataclass
class SliceFold:
    """One train/test partition of slices: ``{case: sorted slice indices}`` per side (cases with no
    slice on a side are left out of it)."""

    train: dict[str, list[int]]
    test: dict[str, list[int]]

    def __post_init__(self) -> None:
        for name in set(self.train) & set(self.test):
            both = set(self.train[name]) & set(self.test[name])
            if both:
                raise DataError(f"slice(s) {sorted(both)[:5]} of case {name!r} are in both train and test")

    @property
    def shared_cases(self) -> list[str]:
        """Cases with slices on both sides (the leak a patient-level split never has)."""
        return sorted(set(self.train) & set(self.test))

    def counts(self) -> tuple[int, int]:
        """(training slices, test slices)."""
        return sum(map(len, self.train.values())), sum(map(len, self.test.values()))


def slice_kfold(slices: Mapping[str, Sequence[int]], k: int = 5, *, seed: int = 0) -> list[SliceFold]:
    """k-fold cross-validation over slices, not patients: every slice is tested exactly once.

    ``slices`` maps each case to the slice indices it contributes (e.g. its labelled axial slices).
    Each case's slices are shuffled with a generator seeded by ``seed`` and the case's name and dealt
    into ``k`` near-equal parts (``numpy.array_split``), part ``f`` being fold ``f``'s test slices. So
    every fold tests about 1/k of every patient's slices and trains on the rest -- what a shuffled
    k-fold over the pooled slice list does in expectation (7112/1777 of luo2020's 8889 slices), with
    the same share per patient. One case's parts depend on its own name and slices only, so a job can
    rebuild its part of the split from one case (:func:`slice_part`).

    Returns ``k`` :class:`SliceFold`; a case with fewer than ``k`` slices is missing from the test
    side of some folds.
    """
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    if not slices:
        raise DataError("slice_kfold needs at least one case")
    folds = [SliceFold({}, {}) for _ in range(k)]
    for name in sorted(slices):
        idx = [int(i) for i in slices[name]]
        if len(set(idx)) != len(idx):
            raise DataError(f"case {name!r}: slice indices are not unique")
        for f in range(k):
            test = slice_part(name, idx, f, k, seed=seed)
            train = sorted(set(idx) - set(test))
            if test:
                folds[f].test[name] = test
            if train:
                folds[f].train[name] = train
    return folds


def slice_part(name: str, slices: Sequence[int], fold: int, k: int, *, seed: int = 0) -> list[int]:
    """The test slices of case ``name`` in fold ``fold`` of :func:`slice_kfold` (sorted)."""
    if not 0 <= fold < k:
        raise DataError(f"fold must be in [0, {k}), got {fold}")
    idx = np.asarray(sorted(int(i) for i in slices), int)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])
    order = idx[rng.permutation(len(idx))]
    return sorted(int(i) for i in np.array_split(order, k)[fold])


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
