"""RT Structure Sets: read one and rasterise its ROIs onto the image series; write masks as one.

Reading. :func:`read_rtstruct` returns the ROIs (number, name, contours in patient mm) and the image
series the structure set refers to (the RTReferencedSeriesSequence, else the series of the images
its contours reference). :func:`rasterise` maps every contour point through the series' origin,
direction and spacing to continuous array indices, checks that the contour lies on one slice of the
grid, and fills each slice's contours together with the even-odd rule
(:func:`npcrepro.dicom.raster.fill_polygons`): several contours on a slice are XOR-ed, so a contour
inside another is a hole; slices without contours stay empty.

Grid tolerance. A contour must lie within :data:`SLICE_TOL` slices of a slice plane (and be flat to
that tolerance) and within the image's in-plane extent (pixel centres +/- half a pixel, plus
:data:`EDGE_TOL_PX`); anything else is "off the grid" and raises :class:`~npcrepro.DataError` naming
the RTSTRUCT file, the ROI and the contour.

Writing. :func:`write_rtstruct` turns each mask into contours along its pixel edges
(:func:`npcrepro.dicom.raster.mask_to_polygons`), one ``CLOSED_PLANAR`` contour per loop and slice,
each referencing the slice's image; holes are inner loops. Read back with :func:`rasterise`, the
masks are recovered voxel for voxel (contour points are written with 0.1 µm precision; a pixel centre
is half a pixel from every pixel edge).
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from npcrepro.dicom.raster import fill_polygons, mask_to_polygons
from npcrepro.dicom.series import DicomIndex, Series, to_array_order, to_patient_order
from npcrepro.errors import DataError
from npcrepro.paths import write_atomically

__all__ = ["Roi", "StructureSet", "read_rtstruct", "rasterise", "write_rtstruct", "SLICE_TOL",
           "EDGE_TOL_PX", "RTSTRUCT_SOP_CLASS"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: Largest distance of a contour point from the nearest slice plane, in slices.
SLICE_TOL = 0.25
#: Allowed overshoot of a contour point beyond the image's edge (the outer pixel edge), in pixels.
EDGE_TOL_PX = 1e-3
#: Contour geometric types that enclose an area (rasterised); others (POINT, OPEN_PLANAR ...) are
#: listed in :attr:`Roi.skipped`.
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")


@dataclass
class Roi:
    """One ROI of a structure set: ``contours`` are (n, 3) arrays of patient (x, y, z) mm points;
    ``skipped`` counts contours of other geometric types by type."""

    number: int
    name: str
    contours: list[np.ndarray] = field(default_factory=list)
    interpreted_type: str = ""
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class StructureSet:
    """What :func:`read_rtstruct` found: ``rois`` in file order, the referenced series and the
    images its contours reference."""

    path: Path
    rois: list[Roi]
    series_uid: str | None
    frame_uid: str
    patient_id: str
    referenced_images: list[str] = field(default_factory=list)

    def referenced_series(self, index: DicomIndex) -> str:
        """SeriesInstanceUID of the image series under ``index`` that this structure set refers to
        (DataError naming the file when it is not there)."""
        if self.series_uid:
            index.series_files(self.series_uid, self.path)
            return self.series_uid
        found = {index.instances[u] for u in self.referenced_images if u in index.instances}
        if len(found) == 1:
            return found.pop()
        if not self.referenced_images:
            raise DataError(f"{self.path}: names no referenced image series (no "
                            "RTReferencedSeriesSequence and no contour image references)")
        raise DataError(f"{self.path}: referenced image series not found under {index.root} (none of "
                        f"its {len(self.referenced_images)} referenced images is there)")


def read_rtstruct(path: str | os.PathLike) -> StructureSet:
    """Read an RTSTRUCT file (pydicom).

    Raises
    ------
    DataError
        Unreadable file, not an RTSTRUCT, or malformed contour data.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read DICOM file ({type(exc).__name__}: {exc})") from None
    if str(getattr(ds, "Modality", "")).upper() != "RTSTRUCT":
        raise DataError(f"{path}: not an RTSTRUCT (Modality {getattr(ds, 'Modality', None)!r})")
    series_uid, frame_uid = None, ""
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        frame_uid = frame_uid or str(getattr(fr, "FrameOfReferenceUID", ""))
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                series_uid = series_uid or str(se.SeriesInstanceUID)
    rois: dict[int, Roi] = {}
    for item in getattr(ds, "StructureSetROISequence", []) or []:
        number = int(item.ROINumber)
        rois[number] = Roi(number, str(getattr(item, "ROIName", "") or f"ROI_{number}").strip())
    for obs in getattr(ds, "RTROIObservationsSequence", []) or []:
        number = int(getattr(obs, "ReferencedROINumber", -1))
        if number in rois:
            rois[number].interpreted_type = str(getattr(obs, "RTROIInterpretedType", "") or "")
    images: list[str] = []
    for item in getattr(ds, "ROIContourSequence", []) or []:
        number = int(item.ReferencedROINumber)
        roi = rois.setdefault(number, Roi(number, f"ROI_{number}"))
        for k, contour in enumerate(getattr(item, "ContourSequence", []) or []):
            kind = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")).upper()
            for ref in getattr(contour, "ContourImageSequence", []) or []:
                images.append(str(ref.ReferencedSOPInstanceUID))
            if kind not in CLOSED_TYPES:
                roi.skipped[kind] = roi.skipped.get(kind, 0) + 1
                continue
            data = getattr(contour, "ContourData", None)
            try:
                pts = np.asarray([float(v) for v in data], dtype=float)
            except (TypeError, ValueError):
                raise DataError(f"{path}: ROI {roi.name!r} contour {k}: unreadable ContourData") from None
            if pts.size % 3 or not np.isfinite(pts).all():
                raise DataError(f"{path}: ROI {roi.name!r} contour {k}: ContourData holds {pts.size} "
                                "values (need finite x, y, z triples)")
            roi.contours.append(pts.reshape(-1, 3))
    return StructureSet(path, list(rois.values()), series_uid, frame_uid,
                        str(getattr(ds, "PatientID", "")), list(dict.fromkeys(images)))


def rasterise(structure_set: StructureSet, series: Series, rule: str = "centre") -> dict[str, np.ndarray]:
    """Every ROI of ``structure_set`` as a bool mask (z, y, x) on the grid of ``series``: the pixels
    whose centre a slice's contours enclose (even-odd), or with ``rule="touched"`` also every pixel
    their outlines pass through (:data:`npcrepro.dicom.raster.RULES`).

    ROIs without closed contours give an empty mask. Two ROIs with the same name are united.

    Raises
    ------
    DataError
        A contour off the grid (between slices, not flat, or outside the image), naming the file,
        ROI and contour.
    """
    g = series.geometry
    nz, ny, nx = g.shape
    out: dict[str, np.ndarray] = {}
    for roi in structure_set.rois:
        per_slice: dict[int, list[np.ndarray]] = {}
        for k, pts in enumerate(roi.contours):
            idx = g.physical_to_index(to_array_order(pts))  # (n, 3) continuous (z, y, x)
            z = float(np.round(np.median(idx[:, 0])))
            where = (f"{structure_set.path}: ROI {roi.name!r} contour {k} (z = {pts[0, 2]:.2f} mm) lies off "
                     f"the image grid of series {series.series_uid}")
            if np.max(np.abs(idx[:, 0] - z)) > SLICE_TOL:
                raise DataError(f"{where}: it is {np.max(np.abs(idx[:, 0] - z)):.2f} slices from the "
                                f"nearest slice plane (tolerance {SLICE_TOL})")
            if not 0 <= z < nz:
                raise DataError(f"{where}: slice index {z:.0f} is outside 0..{nz - 1}")
            lo, hi = -0.5 - EDGE_TOL_PX, np.array([ny, nx]) - 0.5 + EDGE_TOL_PX
            if np.any(idx[:, 1:] < lo) or np.any(idx[:, 1:] > hi):
                bad = idx[np.any((idx[:, 1:] < lo) | (idx[:, 1:] > hi), axis=1)][0]
                raise DataError(f"{where}: point at (row, column) = ({bad[1]:.1f}, {bad[2]:.1f}) is outside "
                                f"the {ny} x {nx} image")
            per_slice.setdefault(int(z), []).append(idx[:, 1:])
        mask = out.get(roi.name, np.zeros(g.shape, bool))
        for z, polys in per_slice.items():
            mask[z] |= fill_polygons(polys, (ny, nx), rule)
        out[roi.name] = mask
    return out


# ------------------------------------------------------------------------------------------ write
#: Display colours (R, G, B) cycled over exported ROIs.
_COLOURS = [(255, 0, 0), (0, 200, 0), (0, 100, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220),
            (255, 128, 0), (128, 0, 255)]


def _ds(value: float) -> str:
    """A DICOM decimal string of a coordinate in mm (0.1 µm, at most 16 characters)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def interpreted_type(name: str) -> str:
    """RTROIInterpretedType for a structure name: GTV/CTV/PTV by prefix, else ORGAN."""
    upper = name.upper()
    for prefix in ("GTV", "CTV", "PTV"):
        if upper.startswith(prefix):
            return prefix
    return "ORGAN"


def write_rtstruct(masks: Mapping[str, np.ndarray], series: Series, path: str | os.PathLike, *,
                   label: str = "npcrepro", description: str = "npcrepro predictions",
                   overwrite: bool = False) -> Path:
    """Write ``masks`` (name -> bool (z, y, x) on ``series``' grid) as an RTSTRUCT referencing
    ``series``; written to a temporary sibling and renamed.

    Returns the written path. Raises DataError when a mask's shape differs from the series or the
    file exists (without ``overwrite``).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    g = series.geometry
    for name, m in masks.items():
        if np.shape(m) != tuple(g.shape):
            raise DataError(f"mask {name!r}: shape {np.shape(m)} differs from series {series.series_uid} "
                            f"{tuple(g.shape)} (z, y, x)")
    src = series.datasets()[0]
    now = _dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDescription"):
        setattr(ds, keyword, getattr(src, keyword, ""))
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9001
    ds.InstanceNumber = 1
    ds.SeriesDescription = description
    ds.Manufacturer = "npcrepro"
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = ds.InstanceCreationTime = now.strftime("%H%M%S")

    def image_ref(z: int) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID = series.sop_class_uid
        ref.ReferencedSOPInstanceUID = series.sop_uids[z]
        return ref

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_uid
    rt_series.ContourImageSequence = Sequence([image_ref(z) for z in range(g.shape[0])])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as used)
    rt_study.ReferencedSOPInstanceUID = series.study_uid
    rt_study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_uid
    frame.RTReferencedStudySequence = Sequence([rt_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    rois, contours, observations = [], [], []
    for number, (name, mask) in enumerate(masks.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        items = []
        mask = np.asarray(mask, bool)
        for z in np.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0].tolist():
            for loop in mask_to_polygons(mask[z]):
                idx = np.column_stack([np.full(len(loop), float(z)), loop])
                xyz = to_patient_order(g.index_to_physical(idx))
                c = Dataset()
                c.ContourImageSequence = Sequence([image_ref(z)])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(loop)
                c.ContourData = [_ds(v) for v in xyz.ravel()]
                items.append(c)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(_COLOURS[(number - 1) % len(_COLOURS)])
        rc.ContourSequence = Sequence(items)
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = interpreted_type(name)
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return write_atomically(path, lambda tmp: ds.save_as(str(tmp), enforce_file_format=True),
                            overwrite=overwrite)
