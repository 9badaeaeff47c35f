"""DICOM-SEG with highdicom: write masks as a binary Segmentation referencing the image series, and
read one back onto the series' grid.

One segment per structure. A structure whose name starts with GTV/CTV/PTV is coded as
"Morphologically abnormal structure" / "Neoplasm" (SNOMED CT 49755003 / 108369006), any other as
"Anatomical structure" / "Organ" (123037004 / 113343008); the project's name is the segment label,
which is what :func:`read_seg` returns. Frames are the series' slices (their source images are
referenced one by one, spatial locations preserved); empty frames are left out, as DICOM-SEG allows.
The round trip :func:`write_seg` -> :func:`read_seg` is exact (bitmaps are stored as they are).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from npcrepro.dicom.series import Series
from npcrepro.errors import DataError

__all__ = ["write_seg", "read_seg", "segment_codes"]


def segment_codes(name: str):
    """(category, type) highdicom codes for a structure name (see module docstring)."""
    from highdicom.sr import CodedConcept

    if name.upper().startswith(("GTV", "CTV", "PTV")):
        return (CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"),
                CodedConcept("108369006", "SCT", "Neoplasm"))
    return (CodedConcept("123037004", "SCT", "Anatomical Structure"),
            CodedConcept("113343008", "SCT", "Organ"))


def write_seg(masks: Mapping[str, np.ndarray], series: Series, path: str | os.PathLike, *,
              algorithm: str = "npcrepro", version: str = "0", description: str = "npcrepro predictions",
              overwrite: bool = False) -> Path:
    """Write ``masks`` (name -> bool (z, y, x) on ``series``' grid) as a binary DICOM-SEG referencing
    the series' images; written to a temporary sibling and renamed.

    Returns the written path. Raises DataError for a shape that differs from the series, no masks,
    or an existing file (without ``overwrite``).
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    import npcrepro
    from npcrepro.paths import write_atomically

    if not masks:
        raise DataError(f"{path}: no masks to write")
    shape = tuple(series.geometry.shape)
    for name, m in masks.items():
        if np.shape(m) != shape:
            raise DataError(f"mask {name!r}: shape {np.shape(m)} differs from series {series.series_uid} "
                            f"{shape} (z, y, x)")
    names = list(masks)
    pixels = np.stack([np.asarray(masks[n], bool) for n in names], axis=-1).astype(np.uint8)  # (z, y, x, s)
    family = hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence")
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, family=family, version=version)
    descriptions = []
    for number, name in enumerate(names, start=1):
        category, kind = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    seg = hd.seg.Segmentation(
        source_images=series.datasets(), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=9002, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="npcrepro", manufacturer_model_name=algorithm,
        software_versions=str(getattr(npcrepro, "__version__", "0")), device_serial_number="0",
        series_description=description)
    return write_atomically(path, lambda tmp: seg.save_as(str(tmp), enforce_file_format=True),
                            overwrite=overwrite)


def read_seg(path: str | os.PathLike, series: Series) -> dict[str, np.ndarray]:
    """The segments of a DICOM-SEG as bool masks (z, y, x) on ``series``' grid, by segment label.

    Frames are placed through the source images they reference (a series image that no frame
    references is empty). Raises DataError when the file is unreadable, is not a SEG, or references
    none of the series' images.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read DICOM-SEG ({type(exc).__name__}: {exc})") from None
    referenced = {u for _, _, u in seg.get_source_image_uids()}
    if not referenced & set(series.sop_uids):
        raise DataError(f"{path}: references none of the images of series {series.series_uid}")
    numbers = list(seg.segment_numbers)
    try:
        pixels = seg.get_pixels_by_source_instance(series.sop_uids, segment_numbers=numbers,
                                                   assert_missing_frames_are_empty=True,
                                                   ignore_spatial_locations=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot map the segmentation onto series {series.series_uid} "
                        f"({type(exc).__name__}: {exc})") from None
    out: dict[str, np.ndarray] = {}
    for k, number in enumerate(numbers):
        label = str(seg.get_segment_description(number).segment_label)
        out[label] = out.get(label, np.zeros(pixels.shape[:3], bool)) | (pixels[..., k] > 0)
    return out
