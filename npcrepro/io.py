"""Image I/O with SimpleITK: NIfTI, NRRD, MHA/MHD, DICOM series, and 2D picture formats.

This is the only module that knows SimpleITK's (x, y, z) axis order. Everything it returns is in
array order: ``Volume.array`` is (z, y, x) (or (y, x) for 2D images), and ``spacing``, ``origin`` and
``direction`` are expressed in the same reversed order, so that for an integer index ``i`` (array
order) the physical position in mm is ``origin + direction @ (i * spacing)``, with physical
coordinates also listed (z, y, x) in the scanner's LPS frame.

Every failure caused by the input raises :class:`npcrepro.DataError` naming the file.
"""
from __future__ import annotations

import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from npcrepro import gz
from npcrepro.errors import DataError

__all__ = [
    "Geometry",
    "Volume",
    "read",
    "read_header",
    "write",
    "write_dicom_series",
    "check_same_geometry",
    "geometry_mismatch",
    "resample_to",
    "resample_spacing",
    "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                      ".tif", ".tiff", ".bmp")

# Tolerances for "same grid": spacing relative, origin in mm, direction cosines absolute.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True, eq=False)
class Geometry:
    """The grid of an image: ``shape``, ``spacing`` (mm), ``origin`` (mm) and ``direction``
    (ndim x ndim cosine matrix, columns are the array axes), all in array (z, y, x) order."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """Map array indices (..., ndim) to physical coordinates (..., ndim) in mm."""
        index = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, point: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`index_to_physical` (continuous indices)."""
        point = np.asarray(point, dtype=float) - np.asarray(self.origin)
        return (point @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": self.direction.round(8).tolist()}


@dataclass(frozen=True, eq=False)
class Volume:
    """An image or mask with its physical grid.

    Attributes
    ----------
    array : np.ndarray
        Voxel values, shape (z, y, x) for 3D or (y, x) for 2D.
    spacing : tuple of float
        Voxel size in mm per array axis, same order as ``array``.
    origin : tuple of float
        Physical position (mm) of voxel 0, array order. Defaults to zeros.
    direction : np.ndarray
        (ndim, ndim) direction cosines in array order. Defaults to identity.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...] = None  # type: ignore[assignment]
    direction: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        nd = arr.ndim
        if nd not in (2, 3):
            raise DataError(f"Volume must be 2D or 3D, got an array of shape {arr.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != nd:
            raise DataError(f"spacing {spacing} has {len(spacing)} entries for a {nd}D array")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise DataError(f"spacing must be positive and finite, got {spacing}")
        origin = tuple(float(o) for o in (self.origin if self.origin is not None else (0.0,) * nd))
        direction = (np.eye(nd) if self.direction is None
                     else np.asarray(self.direction, dtype=float).reshape(nd, nd))
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.shape, self.spacing, self.origin, self.direction)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid, new values (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise DataError(f"with_array: shape {array.shape} differs from {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    @classmethod
    def on_grid(cls, array: np.ndarray, geometry: Geometry) -> "Volume":
        return cls(array, geometry.spacing, geometry.origin, geometry.direction)


# --------------------------------------------------------------------------------------- sitk glue
def _to_sitk(volume: Volume) -> sitk.Image:
    arr = volume.array
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(reversed(volume.spacing)))
    img.SetOrigin(tuple(reversed(volume.origin)))
    img.SetDirection(tuple(volume.direction[::-1, ::-1].ravel()))
    return img


def _from_sitk(img: sitk.Image, path: object = "<image>") -> Volume:
    if img.GetNumberOfComponentsPerPixel() > 1:
        # Colour pictures (e.g. JPEG exports): average the colour channels.
        img = _mean_components(img)
    arr = sitk.GetArrayFromImage(img)
    nd = img.GetDimension()
    if nd not in (2, 3):
        raise DataError(f"{path}: {nd}D images are not supported (need 2D or 3D)")
    spacing = tuple(reversed(img.GetSpacing()))
    origin = tuple(reversed(img.GetOrigin()))
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(nd, nd)[::-1, ::-1].copy()
    return Volume(arr, spacing, origin, direction)


def _mean_components(img: sitk.Image) -> sitk.Image:
    n = img.GetNumberOfComponentsPerPixel()
    acc = sitk.Cast(sitk.VectorIndexSelectionCast(img, 0), sitk.sitkFloat32)
    for c in range(1, n):
        acc = acc + sitk.Cast(sitk.VectorIndexSelectionCast(img, c), sitk.sitkFloat32)
    return acc / float(n)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


# ------------------------------------------------------------------------------------------ read
def read(path: str | os.PathLike) -> Volume:
    """Read an image file or a folder holding one DICOM series.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, a 2D picture (``.png``,
        ``.jpg``, ``.tif``, ``.bmp``; colour is averaged to grey), or a directory with exactly one
        DICOM series.

    Returns
    -------
    Volume
        ``array`` (z, y, x) or (y, x), geometry in the same order.

    Raises
    ------
    DataError
        The path does not exist, the format is unsupported, the file is corrupt or truncated, or a
        folder holds no DICOM series or more than one.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        return _read_dicom_series(p)
    suffix = _suffix(p)
    if suffix not in SUPPORTED_SUFFIXES and suffix != ".dcm":
        raise DataError(f"{p}: unsupported image format {suffix!r} "
                        f"(supported: {', '.join(SUPPORTED_SUFFIXES)}, or a DICOM folder)")
    if suffix in (".nii", ".nii.gz"):
        voxels = _check_nifti(p, suffix)
        if voxels is not None:  # a float NIfTI already decoded for the check: do not decode it again
            geometry = read_header(p)
            if int(np.prod(geometry.shape)) == voxels.size:
                return Volume(voxels.reshape(geometry.shape), geometry.spacing, geometry.origin,
                              geometry.direction)
    elif suffix in (".jpg", ".jpeg", ".png"):
        _check_picture(p, suffix)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise DataError(f"{p}: cannot read image (corrupt or truncated file?): "
                        f"{_first_line(exc)}") from None
    try:
        return _from_sitk(img, p)
    except RuntimeError as exc:  # pixel buffer could not be decoded
        raise DataError(f"{p}: cannot decode image data: {_first_line(exc)}") from None


def read_header(path: str | os.PathLike) -> Geometry:
    """The grid of an image file (shape, spacing, origin, direction in array order) without reading
    its voxels. Raises DataError when the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{p}: cannot read image header: {_first_line(exc)}") from None
    nd = reader.GetDimension()
    return Geometry(tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing())),
                    tuple(reversed(reader.GetOrigin())),
                    np.asarray(reader.GetDirection(), dtype=float).reshape(nd, nd)[::-1, ::-1].copy())


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy dtype


def _check_nifti(path: Path, suffix: str) -> np.ndarray | None:
    """Refuse NIfTI-1 files that ITK would read as a silent wrong answer.

    - truncated data: ITK pads the missing voxels with garbage instead of failing;
    - NaN/inf in float data: ITK's NIfTI reader turns them into 0.
    NRRD and MHA readers fail (or keep NaN) on their own.

    Returns the voxels of a 2D or 3D scalar float file without intensity scaling, which the check
    has decoded anyway (flat, native byte order, the order ITK's array has), so that :func:`read`
    does not decode a compressed file twice; None for any other file.
    """
    try:
        if suffix == ".nii.gz":
            with gz.open_read(path) as fh:
                header = fh.read(352)
        else:
            with open(path, "rb") as fh:
                header = fh.read(352)
    except gz.ERRORS as exc:
        raise DataError(f"{path}: cannot read image (corrupt or truncated file?): {exc}") from None
    if len(header) < 348:
        raise DataError(f"{path}: truncated NIfTI header ({len(header)} of 348 bytes)")
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            break
    else:
        return None  # NIfTI-2 or not NIfTI at all: leave it to the reader
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    expected = vox_offset + int(np.prod([max(d, 1) for d in dims[1:ndim + 1]])) * bitpix // 8
    if suffix == ".nii":
        actual = path.stat().st_size
    else:
        actual = gz.uncompressed_size(path, expected)
    if actual < expected:
        raise DataError(f"{path}: truncated NIfTI file ({actual} of {expected} bytes)")
    if datatype in _NIFTI_FLOATS:
        try:
            with (gz.open_read(path) if suffix == ".nii.gz" else open(path, "rb")) as fh:
                fh.seek(vox_offset)
                data = np.frombuffer(fh.read(expected - vox_offset), endian + _NIFTI_FLOATS[datatype])
                fh.read()  # to the end, where gzip checks the CRC: damage that still decodes is caught
        except gz.ERRORS as exc:
            raise gz.damaged(path, exc) from None
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: {bad} NaN/inf intensities")
        slope, inter = struct.unpack(endian + "2f", header[112:120])
        intent = struct.unpack(endian + "h", header[68:70])[0]
        if ndim in (2, 3) and slope in (0.0, 1.0) and inter == 0.0 and intent == 0:
            return data.astype(data.dtype.newbyteorder("="))
    return None


def _check_picture(path: Path, suffix: str) -> None:
    """Refuse a truncated JPEG or PNG: SimpleITK decodes a JPEG cut short without an error and fills
    the missing rows with grey.

    - JPEG: the end-of-image marker (FF D9) must follow the last start-of-scan marker (FF DA);
      neither byte pair can occur inside entropy-coded data, so a cut file has none after its scan;
    - PNG: the IEND chunk must be present.
    """
    data = path.read_bytes()
    if suffix == ".png":
        if not data.startswith(b"\x89PNG"):
            raise DataError(f"{path}: not a PNG file (bad signature)")
        if b"IEND" not in data[-4096:]:
            raise DataError(f"{path}: truncated PNG file (no IEND chunk at the end, {len(data)} bytes)")
        return
    if not data.startswith(b"\xff\xd8"):
        raise DataError(f"{path}: not a JPEG file (no start-of-image marker)")
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise DataError(f"{path}: truncated JPEG file (no end-of-image marker after the image data, "
                        f"{len(data)} bytes)")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK messages start with a source location; the last line carries the reason.
    return lines[-1] if lines else exc.__class__.__name__


def _read_dicom_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    try:
        ids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise DataError(f"{folder}: cannot scan for DICOM series: {_first_line(exc)}") from None
    if not ids:
        raise DataError(f"{folder}: no DICOM series found in this folder")
    if len(ids) > 1:
        raise DataError(f"{folder}: {len(ids)} DICOM series in one folder (expected exactly one; "
                        f"series UIDs {', '.join(ids)})")
    files = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{folder}: cannot read DICOM series: {_first_line(exc)}") from None
    vol = _from_sitk(img, folder)
    if vol.ndim == 2:  # single-slice series: keep it 3D with one slice
        vol = Volume(vol.array[None], (1.0,) + vol.spacing, (0.0,) + vol.origin,
                     _embed_direction(vol.direction))
    return vol


def _embed_direction(d2: np.ndarray) -> np.ndarray:
    d3 = np.eye(3)
    d3[1:, 1:] = d2
    return d3


# ----------------------------------------------------------------------------------------- write
def write(volume: Volume, path: str | os.PathLike, *, compress: bool = True,
          overwrite: bool = True) -> Path:
    """Write ``volume`` to ``path``; the format follows the suffix. A path without a known suffix
    is taken as a folder for a DICOM series (see :func:`write_dicom_series`).

    Boolean arrays are written as uint8. Returns the written path.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise DataError(f"{p}: exists and overwrite=False")
    suffix = _suffix(p)
    if suffix not in SUPPORTED_SUFFIXES:
        return write_dicom_series(volume, p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    raw = tmp.with_name(tmp.name.removesuffix(".gz"))
    arr = np.asarray(volume.array)
    try:
        if suffix == ".nii.gz" and compress and _gzipped_here(arr):
            # the .nii file gzipped here rather than by ITK's own zlib: ITK's takes 2x (integers) to
            # 14x (float noise) as long; the header is ITK's, written for one voxel of the same grid
            header = _nifti_header(volume, arr, raw)
            if header is None:  # not a plain NIfTI-1 file: gzip what ITK writes
                sitk.WriteImage(_to_sitk(volume), str(raw), useCompression=False)
                gz.write([raw.read_bytes()], tmp)
            else:
                gz.write([header, np.ascontiguousarray(arr, np.uint8 if arr.dtype == bool else None)], tmp)
        else:
            sitk.WriteImage(_to_sitk(volume), str(tmp), useCompression=compress and suffix != ".nii")
        os.replace(tmp, p)  # atomic: a reader never sees a half-written file
    finally:
        for t in (tmp, raw):
            if t.exists():
                t.unlink()
    return p


def _gzipped_here(arr: np.ndarray) -> bool:
    """Whether :func:`write` gzips ``arr``'s NIfTI file itself: integers, and floats too where ISA-L
    is installed (zlib is slower than ITK's gzip on float noise)."""
    return arr.dtype.kind in "iub" or (gz.compressor() == "ISA-L" and arr.dtype.kind == "f")


def _nifti_header(volume: Volume, arr: np.ndarray, scratch: Path) -> bytes | None:
    """The bytes SimpleITK writes before the voxels of ``volume``'s NIfTI file (the 348-byte NIfTI-1
    header and its extension flag), or None where that is not what it writes. They do not depend on
    the voxels' values: SimpleITK writes one voxel of the same type on the same grid to ``scratch``,
    and its sizes are set to ``arr``'s (3D arrays in native byte order only)."""
    if arr.ndim != 3 or not arr.dtype.isnative or max(arr.shape) > 32767:
        return None
    one = Volume(np.zeros((1, 1, 1), np.uint8 if arr.dtype == bool else arr.dtype),
                 volume.spacing, volume.origin, volume.direction)
    sitk.WriteImage(_to_sitk(one), str(scratch), useCompression=False)
    written = scratch.read_bytes()
    if len(written) < 352 or struct.unpack_from("<i", written, 0)[0] != 348:
        return None
    offset = int(struct.unpack_from("<f", written, 108)[0])
    if struct.unpack_from("<4h", written, 40) != (3, 1, 1, 1) or len(written) != offset + arr.itemsize:
        return None
    header = bytearray(written[:offset])
    struct.pack_into("<3h", header, 42, *reversed(arr.shape))  # dim[1..3] = x, y, z
    return bytes(header)


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, modality: str = "MR",
                       series_description: str = "npcrepro", series_uid: str | None = None,
                       study_uid: str | None = None) -> Path:
    """Write a 3D volume as a DICOM series, one file per z slice (``IM0000.dcm`` ...).

    Integer data that fit int16 are stored as they are; anything else is stored as int16 with a
    rescale slope (values come back to within half a slope step). Geometry is kept through
    ImagePositionPatient, ImageOrientationPatient and PixelSpacing.
    """
    if volume.ndim != 3:
        raise DataError(f"{folder}: a DICOM series needs a 3D volume, got shape {volume.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(volume.array)
    slope, intercept = 1.0, 0.0
    if arr.dtype.kind in "biu" and arr.size and arr.min() >= -32768 and arr.max() <= 32767:
        stored = arr.astype(np.int16)
    else:
        # Float data: hand GDCM float32 pixels plus RescaleSlope/Intercept tags and it stores int16
        # with that slope (it only accepts integer intercepts; precision is max|value| / 32000).
        peak = float(np.abs(arr).max()) if arr.size else 0.0
        slope = peak / 32000.0 if peak > 0 else 1.0
        stored = arr.astype(np.float32)
    img = _to_sitk(Volume(stored, volume.spacing, volume.origin, volume.direction))
    direction = img.GetDirection()
    series_uid = series_uid or _uid()
    study_uid = study_uid or _uid()
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = [
        ("0008|0031", now_time), ("0008|0021", now_date), ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000e", series_uid), ("0020|000d", study_uid), ("0008|0060", modality),
        ("0008|103e", series_description), ("0010|0010", "npcrepro^anonymous"), ("0010|0020", "0"),
        ("0020|0037", "\\".join(f"{v:.10g}" for v in (direction[0], direction[3], direction[6],
                                                          direction[1], direction[4], direction[7]))),
    ]
    if stored.dtype == np.float32:
        common += [("0028|1052", f"{intercept:.10g}"), ("0028|1053", f"{slope:.10g}"),
                   ("0028|0100", "16"), ("0028|0101", "16"), ("0028|0102", "15"), ("0028|0103", "1")]
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in common:
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0008|0018", _uid())
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0018|0050", f"{volume.spacing[0]:.10g}")
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(sl)
    return folder


def _uid() -> str:
    # 2.25.<128-bit integer> is the UUID-derived DICOM UID root.
    return "2.25." + str(uuid.uuid4().int)


# -------------------------------------------------------------------------------------- geometry
def geometry_mismatch(a: Geometry, b: Geometry, *, check_shape: bool = True) -> str | None:
    """Describe how two grids differ beyond the module tolerances, or None when they agree."""
    if check_shape and tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.ndim != b.ndim:
        return f"dimension {a.ndim} vs {b.ndim}"
    if not np.allclose(a.spacing, b.spacing, rtol=SPACING_RTOL, atol=0):
        return "spacing {} vs {} mm".format(*_fmt_pair(a.spacing, b.spacing))
    if not np.allclose(a.origin, b.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        return "origin {} vs {} mm".format(*_fmt_pair(a.origin, b.origin))
    if not np.allclose(a.direction, b.direction, rtol=0, atol=DIRECTION_ATOL):
        return "direction cosines differ"
    return None


def check_same_geometry(a: Geometry | Volume, b: Geometry | Volume, what: str = "images") -> None:
    """Raise :class:`DataError` (message starts with ``what``) when two grids differ."""
    ga = a.geometry if isinstance(a, Volume) else a
    gb = b.geometry if isinstance(b, Volume) else b
    why = geometry_mismatch(ga, gb)
    if why:
        raise DataError(f"{what}: geometry mismatch ({why})")


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return "(" + ", ".join(f"{v:.{digits}g}" for v in values) + ")"


def _fmt_pair(a: Sequence[float], b: Sequence[float]) -> tuple[str, str]:
    """``a`` and ``b`` with as few significant digits (at least 4) as show that they differ."""
    for digits in range(4, 17):
        fa, fb = _fmt(a, digits), _fmt(b, digits)
        if fa != fb:
            return fa, fb
    return fa, fb


# ------------------------------------------------------------------------------------ resampling
_INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear,
                  "bspline": sitk.sitkBSpline}


def resample_to(volume: Volume, geometry: Geometry, *, order: str = "linear",
                default: float = 0.0) -> Volume:
    """Resample ``volume`` onto ``geometry`` using physical (scanner) coordinates.

    ``order`` is ``"nearest"`` (masks), ``"linear"`` or ``"bspline"``. Voxels of the target grid that
    fall outside ``volume`` get ``default``. Masks (bool) come back as bool.
    """
    if order not in _INTERPOLATORS:
        raise ValueError(f"order must be one of {sorted(_INTERPOLATORS)}, got {order!r}")
    is_bool = volume.array.dtype == bool
    src = volume.with_array(volume.array.astype(np.float32)) if order != "nearest" else volume
    ref = _to_sitk(Volume(np.zeros(geometry.shape, np.uint8), geometry.spacing, geometry.origin,
                          geometry.direction))
    out = sitk.Resample(_to_sitk(src), ref, sitk.Transform(), _INTERPOLATORS[order], float(default))
    res = _from_sitk(out)
    arr = res.array.astype(bool) if is_bool else res.array
    return Volume.on_grid(arr, geometry)


def resample_spacing(volume: Volume, spacing: Sequence[float], *, order: str = "linear") -> Volume:
    """Resample to a new voxel size (mm, array order) over the same physical extent."""
    spacing = tuple(float(s) for s in spacing)
    extent = np.asarray(volume.shape) * np.asarray(volume.spacing)
    shape = tuple(int(max(1, round(e / s))) for e, s in zip(extent, spacing))
    # Keep the field of view centred: shift the origin by half the change in voxel size.
    shift = (np.asarray(spacing) - np.asarray(volume.spacing)) / 2.0
    origin = tuple(np.asarray(volume.origin) + volume.direction @ shift)
    return resample_to(volume, Geometry(shape, spacing, origin, volume.direction), order=order)
