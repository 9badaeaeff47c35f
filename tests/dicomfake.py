"""Synthetic DICOM for the tests, written with pydicom alone (independent of npcrepro.dicom): a CT
series in any orientation, and an RTSTRUCT whose contours are analytic shapes cut by the slice planes
(a sphere: one circle per slice; a torus around the slice normal: two circles per slice, the inner
one a hole).

Geometry follows DICOM: voxel (k, i, j) of the series sits at ``origin + k*dz*normal + i*dr*col +
j*dc*row`` (patient x, y, z in mm), ``row``/``col`` the ImageOrientationPatient cosines and
``normal = row x col``.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass
class FakeSeries:
    """What :func:`write_ct` wrote: the grid and the UIDs."""

    folder: Path
    shape: tuple[int, int, int]            # (slices, rows, columns)
    spacing: tuple[float, float, float]    # (dz, row spacing, column spacing) mm
    origin: np.ndarray                     # patient (x, y, z) of voxel (0, 0, 0)
    row: np.ndarray                        # cosine along which the column index grows
    col: np.ndarray                        # cosine along which the row index grows
    patient_id: str
    series_uid: str
    study_uid: str
    frame_uid: str
    sop_uids: list[str] = field(default_factory=list)   # in k order
    files: list[Path] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    def centres(self) -> np.ndarray:
        """Patient (x, y, z) of every voxel centre, shape (slices, rows, columns, 3)."""
        k, i, j = np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij")
        dz, dr, dc = self.spacing
        return (self.origin + k[..., None] * dz * self.normal + i[..., None] * dr * self.col
                + j[..., None] * dc * self.row)

    def plane(self, k: int) -> np.ndarray:
        """A point of slice plane ``k``."""
        return self.origin + k * self.spacing[0] * self.normal


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def grid(shape, spacing=(2.0, 1.0, 1.0), origin=(-40.0, -40.0, -10.0), row=(1.0, 0.0, 0.0),
         col=(0.0, 1.0, 0.0), folder: Path = Path("."), patient_id: str = "PAT1",
         study_uid: str | None = None) -> FakeSeries:
    """The grid (and fresh UIDs) of a series, nothing written yet."""
    row, col = np.asarray(row, float), np.asarray(col, float)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return FakeSeries(Path(folder), tuple(shape), tuple(map(float, spacing)), np.asarray(origin, float),
                      row, col, patient_id, generate_uid(), study_uid or generate_uid(), generate_uid())


def write_ct(folder: Path, values: np.ndarray, spacing=(2.0, 1.0, 1.0), origin=(-40.0, -40.0, -10.0),
             row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0), patient_id: str = "PAT1", study_uid: str | None = None,
             modality: str = "CT", reverse_files: bool = True) -> FakeSeries:
    """Write ``values`` (slices, rows, columns; HU) as a CT series of one file per slice, stored as
    int16 with RescaleIntercept -1024. Files are numbered in reverse slice order by default, so a
    reader must sort by position."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = grid(values.shape, spacing, origin, row, col, folder, patient_id, study_uid)
    row, col = s.row, s.col
    n = values.shape[0]
    for k in range(n):
        uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage, uid)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID = f"Test^{patient_id}", patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = s.study_uid, s.series_uid
        ds.FrameOfReferenceUID = s.frame_uid
        ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Manufacturer = "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in s.plane(k)]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row, col])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[2]:.6f}"]
        ds.SliceThickness = f"{spacing[0]:.6f}"
        ds.Rows, ds.Columns = values.shape[1], values.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = (np.asarray(values[k]) + 1024).astype(np.int16).tobytes()
        path = folder / f"CT{(n - k if reverse_files else k + 1):04d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        s.sop_uids.append(uid)
        s.files.append(path)
    return s


# ------------------------------------------------------------------------------------ shapes
def circle(centre, radius: float, u, v, n: int = 128, phase: float = 0.1) -> np.ndarray:
    """``n`` points (x, y, z) on a circle in the plane spanned by unit vectors ``u``, ``v``."""
    t = phase + 2 * np.pi * np.arange(n) / n
    u, v = np.asarray(u, float), np.asarray(v, float)
    return np.asarray(centre, float) + radius * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v)


def sphere_contours(s: FakeSeries, centre, radius: float, n: int = 128) -> list[tuple[int, np.ndarray]]:
    """(slice, contour) per slice plane the sphere cuts: one circle each."""
    out = []
    centre = np.asarray(centre, float)
    for k in range(s.shape[0]):
        d = float((centre - s.plane(k)) @ s.normal)
        if abs(d) < radius:
            out.append((k, circle(centre - d * s.normal, np.sqrt(radius ** 2 - d ** 2), s.row, s.col, n)))
    return out


def torus_contours(s: FakeSeries, centre, major: float, minor: float, n: int = 160) -> list[tuple[int, np.ndarray]]:
    """A torus around the slice normal through ``centre``: per slice it cuts, an outer circle of radius
    ``major + w`` and an inner one (the hole) of ``major - w``, ``w = sqrt(minor^2 - d^2)``."""
    out = []
    centre = np.asarray(centre, float)
    for k in range(s.shape[0]):
        d = float((centre - s.plane(k)) @ s.normal)
        if abs(d) < minor:
            w = np.sqrt(minor ** 2 - d ** 2)
            c = centre - d * s.normal
            out.append((k, circle(c, major + w, s.row, s.col, n)))
            out.append((k, circle(c, major - w, s.row, s.col, n, phase=0.37)))
    return out


def in_sphere(points, centre, radius) -> np.ndarray:
    return np.linalg.norm(points - np.asarray(centre, float), axis=-1) <= radius


def in_torus(points, centre, major, minor, axis) -> np.ndarray:
    p = points - np.asarray(centre, float)
    h = p @ np.asarray(axis, float)
    rho = np.linalg.norm(p - h[..., None] * np.asarray(axis, float), axis=-1)
    return (rho - major) ** 2 + h ** 2 <= minor ** 2


def write_rtstruct(path: Path, s: FakeSeries, rois: dict[str, list[tuple[int, np.ndarray]]], *,
                   reference_series: bool = True, series_uid: str | None = None) -> Path:
    """An RTSTRUCT with one ROI per entry of ``rois`` (name -> [(slice, (n, 3) points)]), each contour
    CLOSED_PLANAR and referencing its slice's image. ``series_uid`` overrides the referenced series."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(RTSTRUCT_CLASS, uid)
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_CLASS, uid
    ds.Modality = "RTSTRUCT"
    ds.PatientName, ds.PatientID = f"Test^{s.patient_id}", s.patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = s.study_uid, generate_uid()
    ds.StructureSetLabel = "test"
    ds.StructureSetDate, ds.StructureSetTime = "20260101", "120000"
    if reference_series:
        se = Dataset()
        se.SeriesInstanceUID = series_uid or s.series_uid
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        st.ReferencedSOPInstanceUID = s.study_uid
        st.RTReferencedSeriesSequence = Sequence([se])
        fr = Dataset()
        fr.FrameOfReferenceUID = s.frame_uid
        fr.RTReferencedStudySequence = Sequence([st])
        ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    rois_seq, contour_seq, obs_seq = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber, r.ROIName, r.ReferencedFrameOfReferenceUID = number, name, s.frame_uid
        r.ROIGenerationAlgorithm = "MANUAL"
        rois_seq.append(r)
        items = []
        for k, pts in contours:
            c = Dataset()
            ref = Dataset()
            ref.ReferencedSOPClassUID = CTImageStorage
            ref.ReferencedSOPInstanceUID = s.sop_uids[k] if 0 <= k < len(s.sop_uids) else generate_uid()
            c.ContourImageSequence = Sequence([ref])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.6f}" for v in np.asarray(pts).ravel()]
            items.append(c)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        rc.ContourSequence = Sequence(items)
        contour_seq.append(rc)
        o = Dataset()
        o.ObservationNumber, o.ReferencedROINumber, o.RTROIInterpretedType = number, number, "ORGAN"
        o.ROIInterpreter = ""
        obs_seq.append(o)
    ds.StructureSetROISequence = Sequence(rois_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def ct_values(shape, rng_seed: int = 0) -> np.ndarray:
    """Soft-tissue-like HU noise (int16-safe)."""
    rng = np.random.default_rng(rng_seed)
    return rng.normal(40, 20, size=shape).round()
