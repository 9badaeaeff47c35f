"""DICOM interoperability with pydicom (and highdicom for DICOM-SEG): image series, RT structure sets
and segmentations in, masks out for clinical review.

=========================  ===========================================================================
module                     what it does
=========================  ===========================================================================
:mod:`.series`             find the DICOM files under a folder by series; read one CT/MR image series
                           into an :class:`~npcrepro.io.Volume` (z, y, x) with its slice UIDs
:mod:`.raster`             polygons on one slice -> mask (even-odd, voxel centres), and mask -> the
                           polygons along its pixel edges
:mod:`.rtstruct`           read an RTSTRUCT and rasterise its ROIs onto a series; write masks as an
                           RTSTRUCT that references the series
:mod:`.seg`                write masks as a DICOM-SEG (highdicom) referencing the series; read one back
=========================  ===========================================================================

Axis order. DICOM lists patient coordinates (x, y, z) in the LPS frame; the rest of the project lists
them in array order (z, y, x) (see :mod:`npcrepro.io`). :func:`.series.to_array_order` and
:func:`.series.to_patient_order` are the only places where this package reverses them.

Every failure caused by the input raises :class:`~npcrepro.DataError` naming the file.
"""
try:
    import pydicom  # noqa: F401 - the optional dependency this package needs
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError("npcrepro.dicom needs pydicom (and highdicom for DICOM-SEG): "
                              "pip install 'npcrepro[interop]'") from exc

from npcrepro.dicom.series import Series, find_dicom, read_series, to_array_order, to_patient_order

__all__ = ["Series", "find_dicom", "read_series", "to_array_order", "to_patient_order"]
