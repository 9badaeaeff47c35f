"""Adapters: convert public head-and-neck / NPC sources into the project's dataset format.

Every adapter turns one source layout into :class:`~npcrepro.datasets.Case` objects; :func:`convert`
writes them with :func:`~npcrepro.datasets.write_dataset` (nnU-Net v2 raw layout plus one mask per
structure), shows a progress bar over cases and returns a :class:`ConversionSummary`.

=================  ===================================================  ========================
source             layout read                                          module
=================  ===================================================  ========================
``openkbp``        OpenKBP ``provided-data`` (sparse CSV, 128^3 CT)      :mod:`.openkbp`
``li2024``         Li et al. 2024 NPC MRI, Zenodo 10900202 (DICOM +      :mod:`.li2024`
                   ``ROI-*.nii``)
``npc-t2-slices``  25 NPC T2 slices exported as JPEG (pixel units)      :mod:`.npc_t2_slices`
``nifti-folder``   a folder of NIfTI (or NRRD/MHA) images and masks     :mod:`.nifti_folder`
``nnunet``         an nnU-Net v2 raw dataset, validated (and copied)    :mod:`.nnunet`
``rtstruct``       DICOM CT/MR series + RTSTRUCT or DICOM-SEG files     :mod:`.rtstruct`
=================  ===================================================  ========================

Cases that cannot be read are skipped and listed in the summary with the reason (``strict=True``
raises at the first one instead); a source from which no case can be read raises
:class:`~npcrepro.DataError`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np

from npcrepro.datasets.adapters.base import Plan, SourceCase
from npcrepro.datasets.case import Case
from npcrepro.datasets.format import Dataset, open_dataset, write_dataset
from npcrepro.errors import DataError, ParameterError

__all__ = ["SOURCES", "ConversionSummary", "Plan", "SourceCase", "convert", "iter_cases", "plan"]


@dataclass
class ConversionSummary:
    """What :func:`convert` did. ``str(summary)`` is a readable report.

    Attributes
    ----------
    source, src, dst
        Source name, the folder read, the dataset folder written (for ``nnunet`` without a
        destination: the source folder, validated in place).
    channels : list of str
        Channel order of the dataset.
    cases, test_cases : list of str
        Converted training (``imagesTr``) and held-out (``imagesTs``) case names.
    structure_counts : dict
        Structure name -> number of converted cases that have it (declared structures with 0 too).
    spacings : list of tuple
        Voxel size (z, y, x) of every converted case, mm (pixels when ``spacing_known`` is False).
    spacing_known : bool
        False for pixel-unit sources: distances measured on them are in pixels, not mm.
    skipped : list of (str, str)
        Case name and reason for every case that was not converted.
    notes : list of str
        Facts about the conversion worth reading (chosen conventions, assumptions).
    seconds : float
        Wall time.
    """

    source: str
    src: Path
    dst: Path
    channels: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    test_cases: list[str] = field(default_factory=list)
    structure_counts: dict[str, int] = field(default_factory=dict)
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    spacing_known: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_converted(self) -> int:
        return len(self.cases) + len(self.test_cases)

    @property
    def spacing_range(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(min, max) voxel size per axis (z, y, x) over converted cases, or None."""
        if not self.spacings:
            return None
        arr = np.asarray(self.spacings, dtype=float)
        return tuple(arr.min(0).tolist()), tuple(arr.max(0).tolist())

    @property
    def dataset(self) -> Dataset:
        """The converted dataset, opened."""
        return open_dataset(self.dst)

    def __str__(self) -> str:
        n = self.n_converted
        lines = [f"{self.source}: {n} case{'s' if n != 1 else ''} converted from {self.src}",
                 f"  dataset: {self.dst}  ({self.seconds:.1f} s)",
                 f"  split: {len(self.cases)} training (imagesTr), {len(self.test_cases)} test "
                 f"(imagesTs)",
                 f"  channels: {', '.join(self.channels) or '-'}"]
        if self.structure_counts:
            parts = [f"{s} {k}/{n}" for s, k in self.structure_counts.items()]
            lines.append("  structures (cases having each): " + ", ".join(parts))
        rng = self.spacing_range
        if rng is not None:
            unit = "mm" if self.spacing_known else "pixels (spacing unknown: distances are in pixels)"
            lo, hi = (_fmt(v) for v in rng)
            lines.append(f"  spacing (z, y, x): {lo}" + (f" to {hi}" if lo != hi else "") + f" {unit}")
        if self.skipped:
            lines.append(f"  skipped: {len(self.skipped)} case{'s' if len(self.skipped) != 1 else ''}")
            lines += [f"    - {name}: {why}" for name, why in self.skipped]
        else:
            lines.append("  skipped: none")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# ------------------------------------------------------------------------------------- registry
def _registry() -> dict[str, ModuleType]:
    from npcrepro.datasets.adapters import li2024, nifti_folder, nnunet, npc_t2_slices, openkbp, rtstruct

    return {"openkbp": openkbp, "li2024": li2024, "npc-t2-slices": npc_t2_slices,
            "nifti-folder": nifti_folder, "nnunet": nnunet, "rtstruct": rtstruct}


#: Source name -> adapter module. Each module has ``DESCRIPTION`` and ``plan(src, **options)``.
SOURCES: dict[str, ModuleType] = _registry()


def _adapter(source: str) -> ModuleType:
    key = str(source).strip().lower().replace("_", "-")
    if key not in SOURCES:
        raise ParameterError(f"unknown source {source!r} (valid: {', '.join(SOURCES)})")
    return SOURCES[key]


def plan(source: str, src: str | os.PathLike, **options) -> Plan:
    """Scan ``src`` with the adapter for ``source`` and list its cases (nothing is read yet).

    Raises
    ------
    ParameterError
        Unknown source name or adapter option.
    DataError
        ``src`` does not hold that source's layout.
    """
    module = _adapter(source)
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: source folder not found")
    try:
        return module.plan(src, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ParameterError(f"source {source!r}: {exc}") from None
        raise


def iter_cases(source: str, src: str | os.PathLike, *, limit: int | None = None,
               **options) -> Iterator[Case]:
    """Read a source's cases one at a time without writing anything (for quick looks).

    Cases that cannot be read raise :class:`DataError`.
    """
    p = plan(source, src, **options)
    for item in p.items[:limit]:
        yield p.read(item)


def convert(source: str, src: str | os.PathLike, dst: str | os.PathLike | None, *,
            overwrite: bool = False, progress: bool = True, limit: int | None = None,
            test_limit: int | None = None, strict: bool = False, **options) -> ConversionSummary:
    """Convert a real data source into the project's dataset format.

    Parameters
    ----------
    source : str
        One of :data:`SOURCES`: ``openkbp``, ``li2024``, ``npc-t2-slices``, ``nifti-folder``,
        ``nnunet``, ``rtstruct``.
    src : path
        The source folder (see each adapter's module docstring for what it accepts).
    dst : path or None
        The dataset folder to write. It must not exist or be empty unless ``overwrite``. Only
        ``nnunet`` accepts None (or ``dst == src``): the dataset is then validated in place.
    overwrite : bool
        Replace an existing ``dst``: the new dataset is written beside it and takes its place only
        when complete, so a source that fails leaves the old dataset as it was.
    progress : bool
        Show a tqdm progress bar over cases.
    limit : int, optional
        Convert at most this many cases, in source order (training cases before test cases).
    test_limit : int, optional
        Count the held-out test cases (``imagesTs``: OpenKBP's ``test-pats``) apart: ``limit`` then
        caps the training cases and ``test_limit`` the test cases (0: none), each in source order.
    strict : bool
        Raise at the first case that cannot be read instead of skipping it.
    **options
        Adapter options (e.g. ``names="openkbp"`` for :mod:`.openkbp`, ``gtvp_from="T1"`` for
        :mod:`.li2024`, ``labels={1: "GTVp"}`` for :mod:`.nifti_folder`, ``names={"GTV_1": "GTVp"}``
        for :mod:`.rtstruct`).

    Returns
    -------
    ConversionSummary

    Raises
    ------
    ParameterError
        Unknown source (the message lists the valid ones) or option.
    DataError
        ``src`` is not that source's layout, ``dst`` is not empty (without ``overwrite``), or no
        case at all could be read (the message lists why for each).
    """
    t0 = time.perf_counter()
    module = _adapter(source)
    name = next(k for k, v in SOURCES.items() if v is module)
    src = Path(src)
    if limit is not None and int(limit) < 1:
        raise ParameterError(f"limit must be a positive number of cases, got {limit!r}")
    if test_limit is not None and int(test_limit) < 0:
        raise ParameterError(f"test_limit must be a number of test cases (0 or more), got {test_limit!r}")
    validate_only = dst is None or (Path(dst).exists() and Path(dst).resolve() == src.resolve())
    if validate_only and name != "nnunet":
        raise ParameterError(f"source {name!r} needs a destination folder different from {src}")
    out = src if validate_only else Path(dst)
    if not validate_only and out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: exists and is not empty (pass overwrite=True / --overwrite to "
                        "replace it)")
    p = plan(name, src, **options)
    if test_limit is None:
        items = p.items[: int(limit)] if limit is not None else list(p.items)
    else:
        train = [i for i in p.items if i.split != "Ts"]
        items = (train[: int(limit)] if limit is not None else train) + \
            [i for i in p.items if i.split == "Ts"][: int(test_limit)]
    if not items:
        raise DataError(f"{p.src}: no {name} cases found")

    summary = ConversionSummary(name, p.src, out, channels=list(p.channels),
                                spacing_known=p.spacing_known, notes=list(p.notes))
    counts = {s: 0 for s in p.structures}
    bar = _bar(len(items), f"{name}: {'validating' if validate_only else 'converting'}", progress)

    def good_cases(split: str) -> Iterator[Case]:
        for item in items:
            if item.split != split:
                continue
            bar.set_postfix_str(item.name, refresh=False)
            try:
                case = p.read(item)
            except DataError as exc:
                if strict:
                    raise
                summary.skipped.append((item.name, str(exc)))
                bar.update(1)
                continue
            (summary.cases if split == "Tr" else summary.test_cases).append(case.name)
            summary.spacings.append(tuple(case.spacing))
            for s in case.labels:
                counts[s] = counts.get(s, 0) + 1
            bar.update(1)
            yield case

    try:
        if validate_only:
            for split in ("Tr", "Ts"):
                for _ in good_cases(split):
                    pass
        else:
            write_dataset(out, good_cases("Tr"), test_cases=good_cases("Ts"), channels=p.channels,
                          structures=p.structures, name=out.name, description=p.description,
                          source=name, spacing_known=p.spacing_known, overwrite=overwrite,
                          extra={"converted_from": str(p.src), **p.extra})
    except DataError:
        if summary.n_converted == 0 and summary.skipped:
            raise _nothing_converted(name, p.src, summary.skipped) from None
        raise
    finally:
        bar.close()
    if summary.n_converted == 0:
        raise _nothing_converted(name, p.src, summary.skipped)
    if not validate_only:
        from npcrepro.datasets.nnunet_raw import validate

        problems = validate(out, labels=False)
        summary.notes.append("a valid nnU-Net v2 raw dataset" if not problems else
                             f"not a valid nnU-Net v2 raw dataset: {'; '.join(problems[:2])}")
    summary.structure_counts = counts
    summary.seconds = time.perf_counter() - t0
    return summary


def _nothing_converted(name: str, src: Path, skipped: list[tuple[str, str]]) -> DataError:
    reasons = "; ".join(f"{n}: {why}" for n, why in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return DataError(f"{src}: no {name} case could be converted ({reasons}{more})")


class _NoBar:
    def set_postfix_str(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass

    def close(self):
        pass


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return _NoBar()
    from npcrepro.paths import progress_bar as tqdm

    return tqdm(total=total, desc=desc, unit="case")
