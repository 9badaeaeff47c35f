"""nnU-Net v2 interoperability: check that a folder is a valid nnU-Net v2 raw dataset, and write a
split as nnU-Net's ``splits_final.json``.

:func:`validate` checks what nnU-Net v2's ``verify_dataset_integrity`` (run by
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``) checks, in this project's words, and a
little more:

* ``dataset.json`` is valid JSON with ``channel_names``, ``labels``, ``numTraining`` and
  ``file_ending``; ``labels`` has ``background: 0`` and its values are the consecutive integers
  0, 1, 2, ... (nnU-Net refuses gaps; region labels, lists of values, need ``regions_class_order``);
* ``imagesTr/`` and ``labelsTr/`` exist; every image file is ``<case>_XXXX<file_ending>``; every
  case has exactly the channels ``0000`` .. ``n-1`` of ``channel_names`` and a label file;
  ``numTraining`` is the number of cases; ``imagesTs/`` (when present) is named the same way;
* every channel and the label of a case share one grid (shape, spacing, origin, direction, with the
  tolerances of :func:`npcrepro.io.geometry_mismatch`; nnU-Net itself only warns about origin and
  direction, this check refuses them);
* the label maps hold only declared values (``labels=True``; this reads every label map).

A project dataset (:mod:`npcrepro.datasets.format`) is an nnU-Net raw dataset plus extra folders
(``structuresTr/``, ``metaTr/``), which nnU-Net ignores.

Splits. nnU-Net trains fold ``f`` on ``splits_final.json[f]["train"]`` and, at the end, predicts and
scores ``["val"]``; it has no separate early-stopping set (it keeps the final checkpoint). A project
fold (``train``, ``val``, ``test``) therefore becomes ``{"train": train, "val": test}``: nnU-Net's
cross-validation predictions are then on the book's test patients. The book's own validation cases
are left out (``book_val="drop"``, the default: nnU-Net trains on exactly the book's training
patients) or added to nnU-Net's training cases (``book_val="train"``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from npcrepro import io
from npcrepro.datasets.splits import Fold
from npcrepro.errors import DataError, ParameterError
from npcrepro.paths import write_atomically

__all__ = ["validate", "check", "to_nnunet_splits", "write_splits_final", "BOOK_VAL"]

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
BOOK_VAL = ("drop", "train")


def _cases(folder: Path, ending: str, problems: list[str]) -> dict[str, list[int]]:
    """Case -> channel indices of the image files in ``folder``; misnamed files become problems."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending) + r"$")
    out: dict[str, list[int]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(ending):
            continue
        m = pattern.match(p.name)
        if m is None:
            problems.append(f"{p}: image file not named <case>_XXXX{ending}")
            continue
        out.setdefault(m.group(1), []).append(int(m.group(2)))
    return out


def _label_values(labels: dict, where: Path, problems: list[str], regions: bool) -> set[int] | None:
    if labels.get("background") != 0:
        problems.append(f"{where}: labels must map 'background' to 0 (got {labels.get('background')!r})")
    values: set[int] = set()
    for name, v in labels.items():
        vs = v if isinstance(v, list) else [v]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in vs):
            problems.append(f"{where}: label {name!r} has a non-integer value {v!r}")
            return None
        if isinstance(v, list) and not regions:
            problems.append(f"{where}: label {name!r} is a region {v} but regions_class_order is missing")
        values.update(vs)
    expected = set(range(max(values) + 1)) if values else {0}
    if values != expected:
        problems.append(f"{where}: label values must be consecutive 0, 1, 2, ... (missing "
                        f"{sorted(expected - values)})")
    return values


def validate(root: str | os.PathLike, *, labels: bool = True) -> list[str]:
    """Problems that stop ``root`` from being a valid nnU-Net v2 raw dataset (empty when valid).

    Parameters
    ----------
    root : path
        The dataset folder (nnU-Net's ``nnUNet_raw/DatasetXXX_Name``).
    labels : bool
        Also read every label map and check its values are declared (slower).

    Returns
    -------
    list of str
        One line per problem, each naming the file.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        return [f"{meta_path}: missing"]
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{meta_path}: invalid JSON ({exc.msg} at line {exc.lineno})"]
    problems: list[str] = []
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return [f"{meta_path}: missing key(s) {', '.join(missing)}"]
    ending = str(meta["file_ending"])
    try:
        n_channels = len(meta["channel_names"])
        wanted = list(range(n_channels))
        if sorted(int(k) for k in meta["channel_names"]) != wanted:
            problems.append(f"{meta_path}: channel_names keys must be 0 .. {n_channels - 1}")
    except (TypeError, ValueError, AttributeError):
        return [f"{meta_path}: channel_names must map '0', '1', ... to names"]
    declared = _label_values(dict(meta["labels"]), meta_path, problems, "regions_class_order" in meta)
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            problems.append(f"{root / sub}: missing folder")
    if problems:
        return problems
    cases = _cases(root / "imagesTr", ending, problems)
    if meta["numTraining"] != len(cases):
        problems.append(f"{meta_path}: numTraining is {meta['numTraining']} but imagesTr holds {len(cases)} "
                        "case(s)")
    label_files = {p.name[: -len(ending)] for p in (root / "labelsTr").iterdir()
                   if p.name.endswith(ending) and not p.name.startswith(".")}
    for extra in sorted(label_files - set(cases)):
        problems.append(f"{root / 'labelsTr' / (extra + ending)}: label without images in imagesTr")
    for case, channels in cases.items():
        if sorted(channels) != wanted:
            problems.append(f"{root / 'imagesTr'}: case {case!r} has channels {sorted(channels)}, dataset.json "
                            f"declares {wanted}")
            continue
        label = root / "labelsTr" / f"{case}{ending}"
        if case not in label_files:
            problems.append(f"{label}: missing (case {case!r} has images)")
            continue
        grid = _grid_problems([root / "imagesTr" / f"{case}_{c:04d}{ending}" for c in wanted] + [label])
        problems += grid
        if labels and declared is not None and not grid:
            found = set(np.unique(io.read(label).array).astype(int).tolist())
            if found - declared:
                problems.append(f"{label}: label values {sorted(found - declared)} are not declared in "
                                f"dataset.json (declared {sorted(declared)})")
    if (root / "imagesTs").is_dir():
        for case, channels in _cases(root / "imagesTs", ending, problems).items():
            if sorted(channels) != wanted:
                problems.append(f"{root / 'imagesTs'}: case {case!r} has channels {sorted(channels)}, "
                                f"dataset.json declares {wanted}")
    return problems


def _grid_problems(files: Sequence[Path]) -> list[str]:
    try:
        grids = [io.read_header(f) for f in files]
    except DataError as exc:
        return [str(exc)]
    out = []
    for f, g in zip(files[1:], grids[1:]):
        why = io.geometry_mismatch(grids[0], g)
        if why:
            out.append(f"{f}: grid differs from {files[0].name} ({why})")
    return out


def check(root: str | os.PathLike, *, labels: bool = True) -> None:
    """:func:`validate`, raising one DataError that lists the first problems."""
    problems = validate(root, labels=labels)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"{root}: not a valid nnU-Net v2 raw dataset: {'; '.join(problems[:3])}{more}")


def to_nnunet_splits(folds: Sequence[Fold], *, book_val: str = "drop") -> list[dict]:
    """Project folds -> nnU-Net's ``[{"train": [...], "val": [...]}, ...]`` (see module docstring)."""
    if book_val not in BOOK_VAL:
        raise ParameterError(f"book_val must be one of {', '.join(BOOK_VAL)}, got {book_val!r}")
    out = []
    for i, f in enumerate(folds):
        if not f.test:
            raise DataError(f"fold {i} has no test cases: nnU-Net's 'val' would be empty")
        train = sorted(f.train + (f.val if book_val == "train" else []))
        out.append({"train": train, "val": sorted(f.test)})
    return out


def write_splits_final(folds: Sequence[Fold], out: str | os.PathLike, *, book_val: str = "drop",
                       dataset: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write ``splits_final.json`` for ``folds``.

    Parameters
    ----------
    out : path
        The file, or a folder to hold ``splits_final.json`` (nnU-Net reads it from
        ``nnUNet_preprocessed/DatasetXXX_Name/``).
    dataset : path, optional
        The nnU-Net raw dataset the folds are for: every case must be one of its training cases
        (``imagesTr``), as nnU-Net requires.

    Written to a temporary sibling and renamed; an existing file is an error unless ``overwrite``.
    """
    splits = to_nnunet_splits(folds, book_val=book_val)
    out = Path(out)
    path = out / "splits_final.json" if out.is_dir() or out.suffix != ".json" else out
    if dataset is not None:
        from npcrepro.datasets.format import open_dataset

        ds = open_dataset(dataset)
        known = set(ds.cases)
        for i, s in enumerate(splits):
            unknown = sorted(set(s["train"] + s["val"]) - known)
            if unknown:
                raise DataError(f"{ds.root}: fold {i} names case(s) {unknown[:5]} that are not training cases "
                                "(imagesTr) of this dataset")
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(splits, indent=2), encoding="utf-8"),
                            overwrite=overwrite)
