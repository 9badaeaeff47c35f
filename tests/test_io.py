"""npcrepro.io: round trips for every format and one clear DataError per bad input."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from npcrepro import DataError, gz, io

# A rotated, anisotropic, off-origin grid: any axis-order slip changes one of these.
DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _volume(dtype=np.float32, shape=(4, 6, 5)):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=shape) * 100).astype(dtype)
    return io.Volume(arr, (3.0, 0.5, 0.7), (10.0, -20.5, 30.25), DIRECTION)


def _assert_same_geometry(a: io.Volume, b: io.Volume):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_round_trip_files(tmp_path, suffix, dtype):
    vol = _volume(dtype)
    path = io.write(vol, tmp_path / f"img{suffix}")
    back = io.read(path)
    _assert_same_geometry(vol, back)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == vol.array.dtype


@pytest.mark.parametrize("compressor", ["isal", "zlib"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.int32, np.float64, bool])
@pytest.mark.parametrize("shape", [(4, 6, 5), (1, 1, 1), (1, 7, 3)])
def test_nii_gz_is_a_plain_gzip_of_the_nii_with_the_same_bytes_each_time(tmp_path, monkeypatch, compressor,
                                                                          dtype, shape):
    """Gzipped by ISA-L where it is installed, else by zlib (floats then by ITK): either way the .nii.gz is
    the .nii file ITK writes, gzipped (what every NIfTI reader expects), and two writes give the same
    bytes."""
    if compressor == "zlib":
        monkeypatch.setattr(gz, "_isal", None)
    elif gz.compressor() != "ISA-L":
        pytest.skip("isal is not installed")
    vol = _volume(dtype, shape)
    a = io.write(vol, tmp_path / "a.nii.gz")
    b = io.write(vol, tmp_path / "b.nii.gz")
    assert a.read_bytes() == b.read_bytes()
    plain = io.write(vol, tmp_path / "c.nii")
    assert gzip.decompress(a.read_bytes()) == plain.read_bytes()
    np.testing.assert_array_equal(io.read(a).array, vol.array.astype(np.uint8) if dtype is bool else vol.array)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_a_2d_nii_gz_is_the_2d_nii_itk_writes_gzipped(tmp_path, dtype):
    arr = (np.random.default_rng(1).normal(size=(7, 5)) * 100).astype(dtype)
    vol = io.Volume(arr, (0.5, 0.7), (1.0, -2.0), np.array([[0.0, 1.0], [1.0, 0.0]]))
    a = io.write(vol, tmp_path / "a.nii.gz")
    assert gzip.decompress(a.read_bytes()) == io.write(vol, tmp_path / "c.nii").read_bytes()
    np.testing.assert_array_equal(io.read(a).array, arr)


def test_nii_gz_gzips_what_itk_writes_where_its_header_is_not_the_expected_one(tmp_path, monkeypatch):
    """Where the one-voxel header is not a plain NIfTI-1 header, ITK's whole file is gzipped instead."""
    monkeypatch.setattr(io, "_nifti_header", lambda *a: None)
    vol = _volume(np.int16)
    a = io.write(vol, tmp_path / "a.nii.gz")
    assert gzip.decompress(a.read_bytes()) == io.write(vol, tmp_path / "c.nii").read_bytes()
    assert not list(tmp_path.glob(".*"))


def test_bool_mask_written_as_uint8(tmp_path):
    vol = _volume()
    mask = vol.with_array(vol.array > 0)
    back = io.read(io.write(mask, tmp_path / "m.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array.astype(bool), mask.array)


def test_axis_order_is_zyx(tmp_path):
    """SimpleITK's (x, y, z) must appear reversed: array axis 0 carries the z spacing."""
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[1, 2, 3] = 7
    vol = io.Volume(arr, (5.0, 2.0, 1.0), (100.0, 10.0, 1.0))
    back = io.read(io.write(vol, tmp_path / "a.nii.gz"))
    assert back.shape == (2, 3, 4) and back.array[1, 2, 3] == 7
    assert back.spacing == (5.0, 2.0, 1.0)
    # index (1, 2, 3) sits at origin + index * spacing in (z, y, x) order
    np.testing.assert_allclose(back.geometry.index_to_physical([1, 2, 3]), [105.0, 14.0, 4.0])


def test_physical_index_round_trip():
    g = _volume().geometry
    idx = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 1.0]])
    np.testing.assert_allclose(g.physical_to_index(g.index_to_physical(idx)), idx, atol=1e-9)


def test_dicom_series_round_trip_integer(tmp_path):
    vol = _volume(np.int16)
    io.write_dicom_series(vol, tmp_path / "series", modality="CT")
    back = io.read(tmp_path / "series")
    assert len(list((tmp_path / "series").glob("*.dcm"))) == vol.shape[0]
    _assert_same_geometry(vol, back)
    np.testing.assert_array_equal(back.array, vol.array)


def test_dicom_series_round_trip_float(tmp_path):
    vol = _volume(np.float32)
    io.write(vol, tmp_path / "series")  # no suffix: a DICOM folder
    back = io.read(tmp_path / "series")
    _assert_same_geometry(vol, back)
    step = np.abs(vol.array).max() / 32000
    np.testing.assert_allclose(back.array, vol.array, atol=step)


def test_2d_picture_and_nifti(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    vol2 = io.Volume(arr, (0.5, 0.25))
    back = io.read(io.write(vol2, tmp_path / "s.png"))
    assert back.ndim == 2 and back.shape == (3, 4)
    np.testing.assert_array_equal(back.array, arr)
    back = io.read(io.write(vol2, tmp_path / "s.nii.gz"))
    assert back.spacing == (0.5, 0.25)


def test_resample_to_same_grid_is_identity():
    vol = _volume()
    out = io.resample_to(vol, vol.geometry, order="linear")
    np.testing.assert_allclose(out.array, vol.array, atol=1e-4)


def test_resample_spacing_preserves_extent_and_centre():
    arr = np.zeros((10, 20, 20), np.float32)
    arr[4:6, 8:12, 8:12] = 1
    vol = io.Volume(arr, (3.0, 1.0, 1.0))
    iso = io.resample_spacing(vol, (1.0, 1.0, 1.0), order="linear")
    assert iso.shape == (30, 20, 20)
    # The blob's physical centre of mass is unchanged.
    def com(v):
        idx = np.argwhere(v.array > 0.5).mean(0)
        return v.geometry.index_to_physical(idx)
    np.testing.assert_allclose(com(iso), com(vol), atol=0.6)


def test_resample_mask_nearest_stays_bool():
    vol = _volume()
    mask = vol.with_array(vol.array > 0)
    out = io.resample_spacing(mask, (1.5, 0.5, 0.7), order="nearest")
    assert out.array.dtype == bool


# ----------------------------------------------------------------------------- bad inputs
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as exc:
        io.read(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(exc.value)


def test_corrupt_file(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a nifti file" * 10))
    with pytest.raises(DataError, match="junk.nii.gz"):
        io.read(p)


def test_truncated_file(tmp_path):
    p = io.write(_volume(shape=(8, 32, 32)), tmp_path / "t.nii.gz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.nii.gz"):
        io.read(p)


def test_truncated_uncompressed_file(tmp_path):
    p = io.write(_volume(shape=(8, 32, 32)), tmp_path / "t.nii")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.nii"):
        io.read(p)


@pytest.mark.parametrize("suffix, what", [(".jpg", "truncated JPEG"), (".png", "truncated PNG")])
def test_truncated_picture_is_refused_not_filled_with_grey(tmp_path, suffix, what):
    rng = np.random.default_rng(0)
    arr = (rng.random((64, 64)) * 255).astype(np.uint8)
    p = io.write(io.Volume(arr, (1.0, 1.0)), tmp_path / f"slice{suffix}")
    assert io.read(p).shape == (64, 64)  # the whole file reads
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"slice{suffix}: {what} file") as err:
        io.read(p)
    assert "\n" not in str(err.value)


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "x.xyz"
    p.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported"):
        io.read(p)


def test_empty_folder_is_not_a_series(tmp_path):
    with pytest.raises(DataError, match="no DICOM series"):
        io.read(tmp_path)


def test_two_series_in_one_folder(tmp_path):
    vol = _volume(np.int16)
    io.write_dicom_series(vol, tmp_path / "a")
    io.write_dicom_series(vol, tmp_path / "b")
    for f in (tmp_path / "b").iterdir():
        f.rename(tmp_path / "a" / f"b_{f.name}")
    with pytest.raises(DataError, match="2 DICOM series") as exc:
        io.read(tmp_path / "a")
    assert str(tmp_path / "a") in str(exc.value)


def test_geometry_mismatch_messages():
    a = _volume()
    cases = {
        "shape": io.Volume(np.zeros((4, 6, 6)), a.spacing, a.origin, a.direction),
        "spacing": io.Volume(a.array, (3.0, 0.5, 0.71), a.origin, a.direction),
        "origin": io.Volume(a.array, a.spacing, (10.0, -20.5, 30.3), a.direction),
        "direction": io.Volume(a.array, a.spacing, a.origin, np.eye(3)),
    }
    for what, b in cases.items():
        with pytest.raises(DataError, match=what):
            io.check_same_geometry(a, b, "label.nii.gz vs image")
    # within tolerance: no error
    io.check_same_geometry(a, io.Volume(a.array, a.spacing, (10.0, -20.5, 30.2500001), a.direction))


def test_volume_validation():
    with pytest.raises(DataError, match="spacing"):
        io.Volume(np.zeros((2, 2, 2)), (1.0, 1.0))
    with pytest.raises(DataError, match="positive"):
        io.Volume(np.zeros((2, 2, 2)), (1.0, 0.0, 1.0))
    with pytest.raises(DataError, match="2D or 3D"):
        io.Volume(np.zeros((2, 2, 2, 2)), (1.0,) * 4)


def test_dicom_needs_3d(tmp_path):
    with pytest.raises(DataError, match="3D"):
        io.write_dicom_series(io.Volume(np.zeros((3, 3)), (1.0, 1.0)), tmp_path / "d")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_non_finite_values_never_become_zero(tmp_path, suffix):
    """ITK's NIfTI reader maps NaN/inf to 0; io.read must refuse instead (NRRD keeps them)."""
    vol = io.Volume(np.array([[[np.nan, np.inf], [1, 2]]], np.float32), (1.0, 1.0, 1.0))
    path = io.write(vol, tmp_path / f"nan{suffix}")
    if suffix == ".nrrd":
        assert np.isnan(io.read(path).array).sum() == 1
    else:
        with pytest.raises(DataError, match="2 NaN/inf"):
            io.read(path)


def _sitk_volume(path) -> io.Volume:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    nd = img.GetDimension()
    return io.Volume(sitk.GetArrayFromImage(img), tuple(reversed(img.GetSpacing())),
                     tuple(reversed(img.GetOrigin())),
                     np.asarray(img.GetDirection()).reshape(nd, nd)[::-1, ::-1])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype,shape", [(np.float32, (4, 6, 5)), (np.float64, (4, 6, 5)),
                                         (np.float32, (6, 5)), (np.float32, (1, 6, 5))])
def test_float_nifti_decoded_once_equals_simpleitk(tmp_path, suffix, dtype, shape):
    """A float NIfTI is decoded by the NaN check and not again by ITK: voxels, dtype and grid must be
    those SimpleITK reads."""
    vol = _volume(dtype, shape) if len(shape) == 3 else io.Volume(
        np.random.default_rng(1).normal(size=shape).astype(dtype), (0.5, 0.7), (1.0, 2.0))
    path = io.write(vol, tmp_path / f"f{suffix}")
    got, ref = io.read(path), _sitk_volume(path)
    assert got.array.dtype == ref.array.dtype and got.array.flags.writeable
    np.testing.assert_array_equal(got.array, ref.array)
    _assert_same_geometry(got, ref)


@pytest.mark.parametrize("slope,inter", [(2.0, 0.0), (1.0, 5.0)])
def test_scaled_float_nifti_read_as_simpleitk_does(tmp_path, slope, inter):
    """Intensity scaling in the header: left to ITK, so the voxels are ITK's scaled values."""
    import struct

    path = io.write(_volume(), tmp_path / "s.nii")
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<2f", slope, inter)
    path.write_bytes(bytes(raw))
    got, ref = io.read(path), _sitk_volume(path)
    np.testing.assert_allclose(got.array, ref.array)
    np.testing.assert_allclose(got.array, _volume().array * slope + inter, rtol=1e-5, atol=1e-4)


def test_a_damaged_gzip_is_called_damaged_and_a_short_one_short(tmp_path):
    rng = np.random.default_rng(0)
    vol = io.Volume(rng.normal(size=(8, 64, 64)).astype(np.float32), (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    p = io.write(vol, tmp_path / "d.nii.gz")
    data = bytearray(p.read_bytes())
    short = tmp_path / "s.nii.gz"
    short.write_bytes(bytes(data[: len(data) * 3 // 4]))
    with pytest.raises(DataError, match=r"s.nii.gz: truncated NIfTI file \([1-9]\d* of \d+ bytes\)"):
        io.read(short)
    for i in range(len(data) // 2, len(data) // 2 + 64):  # flip bytes inside the deflate stream
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"d.nii.gz: corrupt gzip data .*damaged, not only cut short"):
        io.read(p)


def test_a_spacing_mismatch_shows_the_digits_that_differ():
    a = io.Geometry((2, 2, 2), (1.00001, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    b = io.Geometry((2, 2, 2), (1.00015, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert io.geometry_mismatch(a, b) == "spacing (1, 1, 1) vs (1.0002, 1, 1) mm"  # 4 digits: "(1, 1, 1)" twice
