"""Find DICOM files by series and read one image series with pydicom.

:func:`find_dicom` reads the headers of every DICOM file under a folder (once) and groups them:
image series (CT, MR, PT ...) by SeriesInstanceUID, and structure objects (RTSTRUCT, SEG) one per
file. :func:`read_series` turns one image series into a :class:`Series`: the voxel values as an
:class:`~npcrepro.io.Volume` in array order (z, y, x) with spacing, origin and direction in mm, plus
the SOP Instance UID of every z slice so that exported objects can reference the exact images.

Geometry. Slices are sorted by their position along the slice normal (row cosine x column cosine),
so z grows along the normal. With ImagePositionPatient ``P0`` of the first sorted slice, row cosine
``r`` (the direction in which the column index grows), column cosine ``c`` and PixelSpacing
``(dr, dc)``, voxel (k, i, j) sits at ``P0 + k * dz * n + i * dr * c + j * dc * r`` (mm, DICOM
patient order), ``n`` the unit step between slices and ``dz`` its length; the same point is
``Geometry.index_to_physical((k, i, j))`` in array order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from npcrepro import io
from npcrepro.errors import DataError

__all__ = ["Series", "DicomIndex", "find_dicom", "read_series", "to_array_order", "to_patient_order",
           "IMAGE_MODALITIES"]

#: Modalities read as image series (others, e.g. RTPLAN, RTDOSE, SR, are ignored).
IMAGE_MODALITIES = ("CT", "MR", "PT", "NM", "US", "OT")
#: Largest relative deviation of one slice step from the mean step (uniform spacing check).
STEP_RTOL = 0.01
#: Largest disagreement of direction cosines between slices of one series.
COSINE_ATOL = 1e-4


def to_array_order(points_xyz) -> np.ndarray:
    """DICOM patient coordinates (..., 3) listed (x, y, z) -> the project's (z, y, x) order (mm)."""
    return np.asarray(points_xyz, dtype=float)[..., ::-1]


def to_patient_order(points_zyx) -> np.ndarray:
    """Inverse of :func:`to_array_order`: (..., 3) listed (z, y, x) -> DICOM's (x, y, z) (mm)."""
    return np.asarray(points_zyx, dtype=float)[..., ::-1]


@dataclass
class Series:
    """One image series read with pydicom.

    Attributes
    ----------
    volume : io.Volume
        float32 voxel values (z, y, x) after RescaleSlope/Intercept (HU for CT); spacing, origin
        and direction in array order, mm.
    sop_uids : list of str
        SOP Instance UID of slice ``z`` (``len == volume.shape[0]``).
    files : list of Path
        The file of slice ``z``.
    series_uid, study_uid, frame_uid : str
        SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID.
    modality, patient_id, sop_class_uid : str
    folder : Path
        Where the series was found (named in error messages).
    """

    volume: io.Volume
    sop_uids: list[str]
    files: list[Path]
    series_uid: str
    study_uid: str
    frame_uid: str
    modality: str
    patient_id: str
    sop_class_uid: str
    folder: Path

    @property
    def geometry(self) -> io.Geometry:
        return self.volume.geometry

    def datasets(self) -> list:
        """The slices' pydicom datasets in z order, without pixel data (for references)."""
        import pydicom

        return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in self.files]


@dataclass
class DicomIndex:
    """What :func:`find_dicom` found under ``root``.

    ``series``: SeriesInstanceUID -> files of that image series; ``modality``: SeriesInstanceUID ->
    modality; ``structures``: (modality, file) of every RTSTRUCT and SEG, sorted by path;
    ``instances``: SOP Instance UID -> SeriesInstanceUID of every image file."""

    root: Path
    series: dict[str, list[Path]] = field(default_factory=dict)
    modality: dict[str, str] = field(default_factory=dict)
    structures: list[tuple[str, Path]] = field(default_factory=list)
    instances: dict[str, str] = field(default_factory=dict)

    def series_files(self, uid: str, referrer: Path) -> list[Path]:
        """Files of image series ``uid``; DataError naming ``referrer`` when it is not here."""
        if uid not in self.series:
            found = ", ".join(f"{u} ({self.modality[u]}, {len(f)} files)" for u, f in self.series.items())
            raise DataError(f"{referrer}: referenced image series {uid} not found under {self.root} "
                            f"(image series found: {found or 'none'})")
        return self.series[uid]


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def find_dicom(root: str | os.PathLike) -> DicomIndex:
    """Read the header of every DICOM file under ``root`` (recursively) and group them.

    Files that are not DICOM are ignored. Raises DataError when ``root`` does not exist.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: DICOM folder not found")
    index = DicomIndex(root)
    for path in _walk(root):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                                 specific_tags=["Modality", "SeriesInstanceUID", "SOPInstanceUID"])
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            continue
        modality = str(getattr(ds, "Modality", "") or "").upper()
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if modality in ("RTSTRUCT", "SEG"):
            index.structures.append((modality, path))
        elif modality in IMAGE_MODALITIES and uid:
            index.series.setdefault(uid, []).append(path)
            index.modality[uid] = modality
            if getattr(ds, "SOPInstanceUID", None):
                index.instances[str(ds.SOPInstanceUID)] = uid
    return index


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None or len(value) != n:
        raise DataError(f"{path}: missing or malformed {keyword} (needed for the image geometry)")
    return np.asarray([float(v) for v in value], dtype=float)


def read_series(files: Sequence[str | os.PathLike], folder: str | os.PathLike | None = None) -> Series:
    """Read one single-frame image series (the files of one SeriesInstanceUID) with pydicom.

    Parameters
    ----------
    files : sequence of path
        Every file of the series, in any order.
    folder : path, optional
        Named in error messages (default: the first file's folder).

    Returns
    -------
    Series
        Voxel values (z, y, x) float32 with geometry, and the slices' UIDs in z order.

    Raises
    ------
    DataError
        Unreadable file or pixel data; slices that disagree in orientation, size or pixel spacing;
        two slices at the same position; non-uniform slice steps; a step that is not perpendicular
        to the slices (gantry tilt); multi-frame images.
    """
    import pydicom

    files = [Path(f) for f in files]
    if not files:
        raise DataError(f"{folder}: no files in the image series")
    folder = Path(folder) if folder is not None else files[0].parent
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
            raise DataError(f"{f}: cannot read DICOM file ({type(exc).__name__}: {exc})") from None
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{f}: multi-frame images are not supported (one file per slice needed)")
        slices.append(ds)
    ref = slices[0]
    cosines = _floats(ref, "ImageOrientationPatient", 6, files[0])
    spacing_rc = _floats(ref, "PixelSpacing", 2, files[0])
    rows, cols = int(ref.Rows), int(ref.Columns)
    for ds, f in zip(slices, files):
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, f), cosines, atol=COSINE_ATOL):
            raise DataError(f"{f}: ImageOrientationPatient differs from {files[0].name} in the same series")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(f"{f}: {ds.Rows} x {ds.Columns} pixels, {files[0].name} has {rows} x {cols}")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, f), spacing_rc, rtol=1e-4):
            raise DataError(f"{f}: PixelSpacing differs from {files[0].name} in the same series")
    r, c = cosines[:3], cosines[3:]
    normal = np.cross(r, c)
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, f) for ds, f in zip(slices, files)])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    files = [files[i] for i in order]
    positions = positions[order]
    n = len(slices)
    if n > 1:
        steps = np.diff(positions, axis=0)
        lengths = np.linalg.norm(steps, axis=1)
        if np.any(lengths < 1e-3):
            k = int(np.argmin(lengths))
            raise DataError(f"{files[k + 1]}: two slices at the same position as {files[k].name} "
                            f"(series {ref.SeriesInstanceUID} in {folder})")
        step = (positions[-1] - positions[0]) / (n - 1)
        dz = float(np.linalg.norm(step))
        if np.max(np.abs(lengths - dz)) > STEP_RTOL * dz:
            raise DataError(f"{folder}: slice spacing is not uniform (steps {lengths.min():.4g} to "
                            f"{lengths.max():.4g} mm) in series {ref.SeriesInstanceUID}")
        unit = step / dz
        if abs(float(unit @ normal)) < 1 - 1e-3:
            raise DataError(f"{folder}: slices are sheared (gantry tilt: the step between slices is not "
                            f"perpendicular to them) in series {ref.SeriesInstanceUID}")
    else:
        unit = normal
        dz = float(getattr(ref, "SpacingBetweenSlices", None) or getattr(ref, "SliceThickness", None) or 1.0)
    arrays = []
    for ds, f in zip(slices, files):
        try:
            arr = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - missing decoder, truncated data ...
            raise DataError(f"{f}: cannot decode pixel data (transfer syntax "
                            f"{ds.file_meta.get('TransferSyntaxUID', '?')}: {exc})") from None
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        arrays.append(arr * np.float32(slope) + np.float32(intercept))
    array = np.stack(arrays)
    # Direction in array order: columns are the array axes (z, y, x), rows the physical (z, y, x).
    direction = np.stack([to_array_order(unit), to_array_order(c), to_array_order(r)], axis=1)
    volume = io.Volume(array, (dz, float(spacing_rc[0]), float(spacing_rc[1])),
                       tuple(to_array_order(positions[0])), direction)
    return Series(volume=volume, sop_uids=[str(ds.SOPInstanceUID) for ds in slices], files=files,
                  series_uid=str(ref.SeriesInstanceUID), study_uid=str(getattr(ref, "StudyInstanceUID", "")),
                  frame_uid=str(getattr(ref, "FrameOfReferenceUID", "")),
                  modality=str(getattr(ref, "Modality", "")), patient_id=str(getattr(ref, "PatientID", "")),
                  sop_class_uid=str(ref.SOPClassUID), folder=folder)
