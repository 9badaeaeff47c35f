"""DICOM in and out: the pydicom series reader, polygon rasterisation, RTSTRUCT and DICOM-SEG.

Every DICOM file is written here with pydicom (tests/dicomfake.py): a CT series in three orientations
(axial, oblique, flipped), and RTSTRUCTs whose contours are a sphere (one circle per slice it cuts)
and a torus around the slice normal (two circles per slice, the inner one a hole).

Stated tolerances
-----------------
* Rasterisation vs the analytic shape sampled at the same voxel centres: the only voxels allowed to
  differ are those whose centre lies within the polygon's chord error r (1 - cos(pi / n)) of the
  analytic surface (0.0036 mm for the sphere's 128-gons, up to 0.0044 mm for the torus' 160-gons),
  and at most 5 of them; measured: 3 voxels of 3659 (sphere) and 2 of 7896 (torus), in every
  orientation.
* Voxel count vs the analytic volume / voxel volume: sphere within 1 % (measured +0.01 %), torus
  within 2 % (measured +1.0 %: 2 mm slices sample a 7 mm tube coarsely).
* Round trips (mask -> RTSTRUCT or DICOM-SEG -> mask): 0 voxels differ.
"""
from __future__ import annotations

import numpy as np
import pytest

import dicomfake as F
from npcrepro import io
from npcrepro.dicom import find_dicom, read_series
from npcrepro.dicom.raster import fill_polygons, mask_to_polygons
from npcrepro.dicom.rtstruct import rasterise, read_rtstruct, write_rtstruct
from npcrepro.dicom.seg import read_seg, write_seg
from npcrepro.errors import DataError, ParameterError

SHAPE = (20, 56, 72)              # slices, rows, columns: nothing symmetric, to catch swapped axes
SPACING = (2.0, 1.1, 0.9)         # mm
R_SPHERE, R_MAJOR, R_MINOR = 12.0, 16.0, 7.0


def _orientation(kind: str):
    if kind == "axial":
        return (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    if kind == "flipped":  # rows run right-to-left, columns feet-to-head: a coronal-like flipped plane
        return (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    row = np.array([np.cos(0.5), np.sin(0.5), 0.3])
    row /= np.linalg.norm(row)
    col = np.cross(np.cross(row, [0.0, 1.0, 0.2]), row)
    return row, col / np.linalg.norm(col)


@pytest.fixture(params=["axial", "oblique", "flipped"])
def scene(request, tmp_path):
    row, col = _orientation(request.param)
    s = F.write_ct(tmp_path / "ct", F.ct_values(SHAPE), spacing=SPACING, row=row, col=col)
    dz, dr, dc = SPACING
    sphere = s.origin + 9.3 * dz * s.normal + 27.4 * dr * s.col + 33.8 * dc * s.row
    torus = s.origin + 10.2 * dz * s.normal + 26.6 * dr * s.col + 37.1 * dc * s.row
    rois = {"GTV_primary": F.sphere_contours(s, sphere, R_SPHERE),
            "Torus": F.torus_contours(s, torus, R_MAJOR, R_MINOR)}
    path = F.write_rtstruct(tmp_path / "RS.dcm", s, rois)
    return request.param, s, path, sphere, torus, rois


def _series(s):
    index = find_dicom(s.folder)
    return read_series(index.series[s.series_uid])


def test_reader_sorts_slices_and_agrees_with_simpleitk(tmp_path):
    values = F.ct_values(SHAPE, 3)
    s = F.write_ct(tmp_path / "ct", values, spacing=SPACING)  # files numbered in reverse slice order
    series = _series(s)
    assert series.sop_uids == s.sop_uids and series.files == s.files
    np.testing.assert_array_equal(series.volume.array, values.astype(np.float32))
    sitk = io.read(tmp_path / "ct")
    assert io.geometry_mismatch(sitk.geometry, series.geometry) is None
    np.testing.assert_array_equal(sitk.array, series.volume.array)
    # voxel (k, i, j) sits where DICOM puts it
    k, i, j = 7, 30, 41
    expect = s.origin + k * SPACING[0] * s.normal + i * SPACING[1] * s.col + j * SPACING[2] * s.row
    np.testing.assert_allclose(series.geometry.index_to_physical([k, i, j])[::-1], expect, atol=1e-6)


def _distance_to_torus(centres, s, torus):
    """Distance (mm) of each voxel centre to the torus' two circles in its own slice plane."""
    p = centres - torus
    h = p @ s.normal
    rho = np.linalg.norm(p - h[..., None] * s.normal, axis=-1)
    w = np.sqrt(np.clip(R_MINOR ** 2 - h ** 2, 0, None))
    return np.minimum(np.abs(rho - (R_MAJOR + w)), np.abs(rho - (R_MAJOR - w)))


def test_sphere_and_torus_match_the_analytic_shapes(scene):
    kind, s, path, sphere, torus, rois = scene
    series = _series(s)
    masks = rasterise(read_rtstruct(path), series)
    centres = s.centres()
    voxel = float(np.prod(SPACING))
    expected = {  # truth at the voxel centres, volume (mm3), chord error (mm), distance to the surface (mm)
        "GTV_primary": (F.in_sphere(centres, sphere, R_SPHERE), 4 / 3 * np.pi * R_SPHERE ** 3,
                        R_SPHERE * (1 - np.cos(np.pi / 128)),
                        np.abs(np.linalg.norm(centres - sphere, axis=-1) - R_SPHERE)),
        "Torus": (F.in_torus(centres, torus, R_MAJOR, R_MINOR, s.normal), 2 * np.pi ** 2 * R_MAJOR * R_MINOR ** 2,
                  (R_MAJOR + R_MINOR) * (1 - np.cos(np.pi / 160)), _distance_to_torus(centres, s, torus)),
    }
    for name, (truth, volume, chord, dist) in expected.items():
        mask = masks[name]
        differ = mask != truth
        assert differ.sum() <= 5, (kind, name, int(differ.sum()))
        assert np.all(dist[differ] <= chord + 1e-6), (kind, name)
        tol = 0.01 if name == "GTV_primary" else 0.02
        assert abs(mask.sum() - volume / voxel) <= tol * volume / voxel, (kind, name, int(mask.sum()))
    # slices the shapes do not reach are empty; the torus has its hole on its middle slice
    for name, contours in rois.items():
        covered = {k for k, _ in contours}
        empty = [z for z in range(SHAPE[0]) if z not in covered]
        assert empty and not masks[name][empty].any()
    assert sum(1 for k, _ in rois["Torus"] if k == 10) == 2
    hole = np.round(series.geometry.physical_to_index(torus[::-1])).astype(int)
    assert not masks["Torus"][tuple(hole)] and masks["Torus"][hole[0]].sum() > 100


@pytest.mark.parametrize("writer", ["rtstruct", "dicomseg"])
def test_mask_to_dicom_and_back_is_exact(scene, writer, tmp_path):
    kind, s, path, *_ = scene
    series = _series(s)
    masks = {"GTVp": rasterise(read_rtstruct(path), series)["GTV_primary"],
             "Torus": rasterise(read_rtstruct(path), series)["Torus"]}
    masks["Speck"] = np.zeros(SHAPE, bool)
    masks["Speck"][4, 10, 11] = masks["Speck"][4, 11, 12] = True  # diagonal neighbours: two loops
    out = tmp_path / "out" / f"{writer}.dcm"
    if writer == "rtstruct":
        write_rtstruct(masks, series, out)
        back = rasterise(read_rtstruct(out), series)
    else:
        write_seg(masks, series, out)
        back = read_seg(out, series)
    assert set(back) == set(masks)
    for name, m in masks.items():
        assert int((back[name] != m).sum()) == 0, (kind, writer, name)
    with pytest.raises(DataError, match="exists"):
        (write_rtstruct if writer == "rtstruct" else write_seg)(masks, series, out)


def test_dicom_seg_references_the_source_images(tmp_path):
    import highdicom as hd

    s = F.write_ct(tmp_path / "ct", F.ct_values(SHAPE), spacing=SPACING)
    series = _series(s)
    mask = np.zeros(SHAPE, bool)
    mask[5:9, 20:30, 30:45] = True
    path = write_seg({"GTVp": mask, "Parotid_L": np.roll(mask, 20, axis=2)}, series, tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(path))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == ["GTVp", "Parotid_L"]
    assert str(seg.get_segment_description(1).segmented_property_type.meaning) == "Neoplasm"
    refs = {u for _, _, u in seg.get_source_image_uids()}
    assert refs == set(s.sop_uids)  # every slice of the series is referenced
    assert seg.StudyInstanceUID == s.study_uid and seg.FrameOfReferenceUID == s.frame_uid
    assert int(seg.NumberOfFrames) == 8  # 4 slices x 2 segments; empty frames left out


def test_rtstruct_export_references_the_source_images(tmp_path):
    import pydicom

    s = F.write_ct(tmp_path / "ct", F.ct_values(SHAPE), spacing=SPACING)
    series = _series(s)
    mask = np.zeros(SHAPE, bool)
    mask[5:9, 20:30, 30:45] = True
    mask[6, 24:26, 35:37] = False  # a hole on one slice
    path = write_rtstruct({"GTVp": mask}, series, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(str(path))
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == s.frame_uid
    assert ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID == s.series_uid
    contours = ds.ROIContourSequence[0].ContourSequence
    assert len(contours) == 5  # one per slice, plus the hole's inner loop
    assert {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in contours} == set(s.sop_uids[5:9])
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"


# ------------------------------------------------------------------------------------- raster
def test_fill_polygons_by_hand():
    square = np.array([[1.5, 1.5], [1.5, 5.5], [5.5, 5.5], [5.5, 1.5]])
    hole = np.array([[2.5, 2.5], [2.5, 4.5], [4.5, 4.5], [4.5, 2.5]])
    m = fill_polygons([square], (8, 8))
    assert m.sum() == 16 and m[2:6, 2:6].all()
    ring = fill_polygons([square, hole], (8, 8))  # XOR: the inner square is a hole
    assert ring.sum() == 12 and not ring[3:5, 3:5].any()
    # a triangle with vertices on pixel centres: rows 0 <= r < 4 (half-open), and a centre lying on an
    # edge counts when the edge is on its left: row r holds columns 1..r
    tri = fill_polygons([np.array([[0.0, 0.0], [4.0, 4.0], [4.0, 0.0]])], (6, 6))
    assert tri.sum() == 0 + 1 + 2 + 3 and tri[3, 1:4].all() and not tri[:, 0].any() and not tri[4:].any()
    assert fill_polygons([np.array([[0, 0], [1, 1]])], (3, 3)).sum() == 0  # degenerate: ignored
    # polygons reaching beyond the image are clipped, not wrapped
    big = np.array([[-5.0, -5.0], [-5.0, 20.0], [20.0, 20.0], [20.0, -5.0]])
    assert fill_polygons([big], (4, 6)).all()


def test_the_rasterisation_rule_is_stated_and_selectable(scene):
    """Pixel centres inside (the default) or every pixel the outline touches: on a square from 1.2
    to 3.8 (pixel i covers i - 0.5 .. i + 0.5) the answers are known: rows/columns 2-3, or 1-4."""
    from npcrepro.dicom.raster import RULES, outline_pixels

    square = np.array([[1.2, 1.2], [1.2, 3.8], [3.8, 3.8], [3.8, 1.2]])
    centre, touched = (fill_polygons([square], (6, 6), rule) for rule in RULES)
    assert centre.sum() == 4 and centre[2:4, 2:4].all()
    assert touched.sum() == 16 and touched[1:5, 1:5].all()
    ring = outline_pixels([square], (6, 6))
    assert ring.sum() == 12 and not ring[2:4, 2:4].any()                 # the outline alone: no interior
    with pytest.raises(ParameterError, match="unknown rasterisation rule 'edges'"):
        fill_polygons([square], (6, 6), "edges")
    kind, s, path, *_ = scene
    series = _series(s)
    inside = rasterise(read_rtstruct(path), series)["GTV_primary"]
    outline = rasterise(read_rtstruct(path), series, rule="touched")["GTV_primary"]
    assert (inside <= outline).all() and outline.sum() > inside.sum()  # the outline adds a rim


@pytest.mark.parametrize("seed", range(6))
def test_mask_to_polygons_inverts_fill(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((23, 31)) < (0.3 + 0.1 * seed)  # speckle: diagonal touches, holes, edges
    loops = mask_to_polygons(mask)
    np.testing.assert_array_equal(fill_polygons(loops, mask.shape), mask)
    assert all(np.all(np.abs(p - np.round(p)) == 0.5) for p in loops)  # on pixel corners
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []


# ------------------------------------------------------------------------------------- errors
def test_contour_between_slices_is_off_the_grid(tmp_path):
    s = F.write_ct(tmp_path / "ct", F.ct_values(SHAPE), spacing=SPACING)
    c = s.plane(5) + 0.5 * SPACING[0] * s.normal + np.array([30.0, 30.0, 0.0])
    path = F.write_rtstruct(tmp_path / "RS.dcm", s, {"GTV": [(5, F.circle(c, 5, s.row, s.col))]})
    with pytest.raises(DataError) as e:
        rasterise(read_rtstruct(path), _series(s))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "'GTV' contour 0" in msg and "0.50 slices" in msg and "\n" not in msg


def test_contour_outside_the_image_is_off_the_grid(tmp_path):
    s = F.write_ct(tmp_path / "ct", F.ct_values(SHAPE), spacing=SPACING)
    c = s.plane(3) + np.array([-38.0, 0.0, 0.0])  # 2 mm inside the left edge, radius 5 mm: crosses it
    path = F.write_rtstruct(tmp_path / "RS.dcm", s, {"Body": [(3, F.circle(c, 5, s.row, s.col))]})
    with pytest.raises(DataError, match=r"RS\.dcm: ROI 'Body' contour 0 .* off the image grid .* outside the 56 x"):
        rasterise(read_rtstruct(path), _series(s))
    below = s.plane(-3) + np.array([10.0, 10.0, 0.0])
    F.write_rtstruct(path, s, {"Body": [(-3, F.circle(below, 5, s.row, s.col))]})
    with pytest.raises(DataError, match=r"slice index -3 is outside 0\.\.19"):
        rasterise(read_rtstruct(path), _series(s))


def test_series_errors_name_the_file(tmp_path):
    import pydicom

    s = F.write_ct(tmp_path / "ct", F.ct_values((4, 8, 8)), spacing=(2.0, 1.0, 1.0))
    ds = pydicom.dcmread(str(s.files[2]))
    ds.ImagePositionPatient = [str(v) for v in s.plane(1)]  # two slices at one position
    ds.save_as(str(s.files[2]))
    with pytest.raises(DataError, match="two slices at the same position"):
        read_series(s.files)
    ds.ImagePositionPatient = [str(v) for v in s.plane(2) + 0.6 * s.normal]  # uneven steps
    ds.save_as(str(s.files[2]))
    with pytest.raises(DataError, match="not uniform"):
        read_series(s.files)
    ds.ImagePositionPatient = [str(v) for v in s.plane(2)]
    ds.save_as(str(s.files[2]))
    s.files[1].write_bytes(s.files[1].read_bytes()[:-30])  # pixel data cut short
    with pytest.raises(DataError, match=f"{s.files[1].name}: cannot decode pixel data .*less than expected"):
        read_series(s.files)
    s.files[1].write_bytes(s.files[1].read_bytes()[:400])  # the header cut short
    with pytest.raises(DataError, match=f"{s.files[1].name}: missing or malformed ImageOrientationPatient"):
        read_series(s.files)
