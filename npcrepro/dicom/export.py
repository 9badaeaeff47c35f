"""Export masks (predictions) for clinical review: DICOM-SEG or RTSTRUCT referencing the source series.

:func:`export` reads the masks (NIfTI/NRRD/MHA files, one structure each), picks the image series
they belong to in a DICOM folder, writes the DICOM object, reads it back and checks that it gives
the masks again (exactly for DICOM-SEG; voxel for voxel for RTSTRUCT, whose contours follow the
pixel edges), and returns an :class:`ExportReport`.

Masks: a file (the structure is named after the file, ``GTVp.nii.gz`` -> ``GTVp``) or a folder of
such files (``predictions/<case>/`` of a run folder). Each must be a 0/1 mask on the series' grid:
the grid of the case converted from that series (:mod:`npcrepro.datasets.adapters.rtstruct`), or any
grid whose voxel centres are the series' voxel centres in another axis order or direction (it is
then resampled, exactly, by nearest neighbour).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npcrepro import io
from npcrepro.dicom.series import Series, find_dicom, read_series
from npcrepro.errors import DataError, ParameterError

__all__ = ["FORMATS", "MASK_SUFFIXES", "ExportReport", "read_masks", "export", "file_stem"]

FORMATS = ("dicomseg", "rtstruct")
#: The image files a mask (or a one-channel scan, for ``npcrepro predict``) is read from.
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class ExportReport:
    """What :func:`export` wrote: the file, the series it references and the structures with their
    voxel counts (the file was read back and gave every mask voxel for voxel)."""

    path: Path
    kind: str
    series_uid: str
    voxels: dict[str, int]
    resampled: bool

    def __str__(self) -> str:
        parts = ", ".join(f"{n} ({v} voxels)" for n, v in self.voxels.items())
        lines = [f"wrote {self.kind} {self.path}", f"  references series {self.series_uid}",
                 f"  structures: {parts}", "  read back: identical to the masks, voxel for voxel"]
        if self.resampled:
            lines.append("  note: masks resampled onto the series grid (same voxel centres)")
        return "\n".join(lines)


def file_stem(path: Path) -> str | None:
    """The file's name without its :data:`MASK_SUFFIXES` suffix (``GTVp.nii.gz`` -> ``GTVp``); None
    for another kind of file."""
    low = path.name.lower()
    return next((path.name[: -len(s)] for s in MASK_SUFFIXES if low.endswith(s)), None)


def read_masks(path: str | os.PathLike) -> dict[str, io.Volume]:
    """Structure name -> mask Volume (bool) from a mask file or a folder of them (see module doc)."""
    path = Path(path)
    files = ([path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and file_stem(p))
             if path.is_dir() else [])
    if not path.exists():
        raise DataError(f"{path}: mask file or folder not found")
    if not files:
        raise DataError(f"{path}: no mask files ({', '.join(MASK_SUFFIXES)})")
    out = {}
    for f in files:
        vol = io.read(f)
        if vol.ndim != 3:
            raise DataError(f"{f}: a 3D mask is needed, got shape {vol.shape}")
        values = np.unique(vol.array)
        if not np.isin(values, (0, 1)).all():
            raise DataError(f"{f}: not a binary mask (values {values[:8].tolist()})")
        out[file_stem(f) or f.stem] = vol.with_array(vol.array.astype(bool))
    return out


def _same_centres(a: io.Geometry, b: io.Geometry) -> bool:
    """Whether grid ``a``'s voxel centres are grid ``b``'s (possibly in another order)."""
    if int(np.prod(a.shape)) != int(np.prod(b.shape)):
        return False
    corners = np.array([[z, y, x] for z in (0, a.shape[0] - 1) for y in (0, a.shape[1] - 1)
                        for x in (0, a.shape[2] - 1)], float)
    idx = b.physical_to_index(a.index_to_physical(corners))
    inside = np.all(idx > -1e-3) and np.all(idx < np.asarray(b.shape) - 1 + 1e-3)
    return bool(inside and np.allclose(idx, np.round(idx), atol=1e-3))


def _pick_series(index, masks: dict[str, io.Volume], series_uid: str | None, folder: Path) -> tuple[Series, bool]:
    grid = next(iter(masks.values())).geometry
    if series_uid is not None:
        return read_series(index.series_files(series_uid, folder), folder), False
    if not index.series:
        raise DataError(f"{folder}: no image series found")
    candidates = [read_series(files, folder) for files in index.series.values()]
    exact = [s for s in candidates if io.geometry_mismatch(grid, s.geometry) is None]
    if len(exact) == 1:
        return exact[0], False
    similar = [s for s in candidates if _same_centres(grid, s.geometry)]
    if len(exact) > 1 or len(similar) > 1:
        uids = ", ".join(s.series_uid for s in (exact or similar))
        raise ParameterError(f"{folder}: several image series fit the masks' grid ({uids}); choose one "
                             "with series_uid= (--series UID)")
    if similar:
        return similar[0], True
    raise DataError(f"{folder}: no image series has the masks' grid (shape {tuple(grid.shape)}, spacing "
                    f"{tuple(round(v, 4) for v in grid.spacing)} mm); export masks on the series' grid")


def export(masks: str | os.PathLike, dicom_dir: str | os.PathLike, out: str | os.PathLike, *,
           kind: str = "dicomseg", series_uid: str | None = None, overwrite: bool = False) -> ExportReport:
    """Write the masks at ``masks`` as a DICOM-SEG or RTSTRUCT referencing their series in
    ``dicom_dir``, then read the file back and compare.

    Parameters
    ----------
    kind : "dicomseg" or "rtstruct"
    series_uid : str, optional
        The series to reference (default: the one series whose grid the masks have).
    out : path
        The file to write (``.dcm``); an existing file is an error unless ``overwrite``.

    Raises
    ------
    DataError
        Unreadable or non-binary masks, masks on different grids, no series with their grid, a
        file that does not read back as the masks.
    """
    from npcrepro.dicom.rtstruct import rasterise, read_rtstruct, write_rtstruct
    from npcrepro.dicom.seg import read_seg, write_seg

    if kind not in FORMATS:
        raise ParameterError(f"unknown export format {kind!r} (valid: {', '.join(FORMATS)})")
    vols = read_masks(masks)
    first = next(iter(vols))
    for name, v in vols.items():
        why = io.geometry_mismatch(vols[first].geometry, v.geometry)
        if why:
            raise DataError(f"{masks}: masks {first!r} and {name!r} are on different grids ({why})")
    folder = Path(dicom_dir)
    series, resample = _pick_series(find_dicom(folder), vols, series_uid, folder)
    g = series.geometry
    arrays = {}
    for name, v in vols.items():
        if io.geometry_mismatch(v.geometry, g) is not None:
            if not _same_centres(v.geometry, g):
                raise DataError(f"{masks}: mask {name!r} is not on the grid of series {series.series_uid} "
                                f"({io.geometry_mismatch(v.geometry, g)})")
            v = io.resample_to(v, g, order="nearest")
        arrays[name] = np.asarray(v.array, bool)
    out = Path(out)
    if kind == "dicomseg":
        path = write_seg(arrays, series, out, overwrite=overwrite)
        back = read_seg(path, series)
    else:
        path = write_rtstruct(arrays, series, out, overwrite=overwrite)
        back = rasterise(read_rtstruct(path), series)
    differing = {n: int((back.get(n, np.zeros(g.shape, bool)) != m).sum()) for n, m in arrays.items()}
    if any(differing.values()):
        raise DataError(f"{path}: reading the file back does not give the masks (voxels differing: "
                        f"{differing}); the file is left for inspection")
    return ExportReport(path, kind, series.series_uid, {n: int(m.sum()) for n, m in arrays.items()}, resample)
