"""Normalisation, crop/pad, slicing, augmentation and invertible preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npcrepro import transforms as T
from npcrepro.datasets import Case
from npcrepro.errors import DataError, ParameterError


def test_zscore_and_masked_statistics():
    rng = np.random.default_rng(0)
    a = rng.normal(5, 3, (4, 10, 10)).astype(np.float32)
    z = T.zscore(a)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    mask = np.zeros(a.shape, bool)
    mask[:, :5] = True
    zm = T.zscore(a, mask)
    assert abs(zm[mask].mean()) < 1e-5
    assert T.zscore(np.ones((3, 3))).max() == 0  # constant image: no division by zero


def test_clip_minmax_normalise():
    a = np.array([-1000.0, 0.0, 40.0, 3000.0])
    assert T.clip(a, -200, 200).tolist() == [-200, 0, 40, 200]
    assert T.minmax(a, -200, 200).tolist() == pytest.approx([0, 0.5, 0.6, 1])
    assert T.normalise(a, "window", window=(-200, 200)).max() == 1
    assert abs(T.normalise(a, "clip_zscore", window=(-200, 200)).mean()) < 1e-5
    with pytest.raises(ParameterError, match="valid"):
        T.normalise(a, "histogram")
    with pytest.raises(ParameterError):
        T.normalise(a, "window")


def test_bbox_and_slices_with():
    m = np.zeros((5, 8, 9), bool)
    m[1:3, 2:5, 4] = True
    assert T.bbox(m) == ((1, 3), (2, 5), (4, 5))
    assert T.bbox(m, margin=2) == ((0, 5), (0, 7), (2, 7))
    assert T.bbox(np.zeros((3, 3), bool)) is None
    assert T.slices_with(m).tolist() == [1, 2]


def test_crop_pads_outside():
    a = np.arange(20).reshape(4, 5)
    c = T.crop(a, ((-1, 3), (1, 7)), fill=-1)
    assert c.shape == (4, 6)
    assert c[0].tolist() == [-1] * 6 and c[1].tolist() == [1, 2, 3, 4, -1, -1]
    with pytest.raises(DataError):
        T.crop(a, ((2, 2), (0, 1)))
    arr, box = T.pad_crop(np.ones((2, 3, 7)), (5, 5))
    assert arr.shape == (2, 5, 5) and box == ((-1, 4), (1, 6))
    assert T.center_box((10, 10), (3, 4)) == ((4, 7), (3, 7))


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       box=st.tuples(st.tuples(st.integers(-4, 6), st.integers(1, 8)),
                     st.tuples(st.integers(-4, 6), st.integers(1, 8))))
def test_uncrop_inverts_crop(shape, box):
    box = tuple((a, a + n) for a, n in box)
    a = np.arange(1, np.prod(shape) + 1).reshape(shape)
    back = T.uncrop(T.crop(a, box), box, shape)
    inside = np.zeros(shape, bool)
    inside[tuple(slice(max(s, 0), max(min(e, n), 0)) for (s, e), n in zip(box, shape))] = True
    assert np.array_equal(back[inside], a[inside])
    assert (back[~inside] == 0).all()


def test_random_box_and_patch():
    rng = np.random.default_rng(1)
    for _ in range(20):
        box = T.random_box((10, 20, 20), (4, 8, 8), rng)
        assert all(0 <= a and b <= n for (a, b), n in zip(box, (10, 20, 20)))
    fg = np.zeros((10, 20, 20), bool)
    fg[7, 15, 15] = True
    box = T.random_box((10, 20, 20), (4, 8, 8), rng, center_in=fg)
    assert all(a <= c < b for (a, b), c in zip(box, (7, 15, 15)))
    assert T.random_box((2, 4, 4), (4, 8, 8), rng) == ((-1, 3), (-2, 6), (-2, 6))
    p = T.extract_patch(np.arange(27).reshape(3, 3, 3), (0, 0, 0), (3, 3, 3))
    assert p[1, 1, 1] == 0 and p[0, 0, 0] == 0 and p[2, 2, 2] == 13


def test_random_box_uncentred_puts_the_target_anywhere_in_the_box():
    """With ``centred=False`` the target voxel's position in the box is uniform per axis (a network
    cannot learn that the target sits at the centre); centred, it is always the box's centre."""
    rng = np.random.default_rng(0)
    fg = np.zeros((64, 64), bool)
    fg[32, 30] = True
    pos = np.array([[c - a for (a, _), c in zip(T.random_box((64, 64), (16, 16), rng, center_in=fg, centred=False),
                                                (32, 30))] for _ in range(4000)])
    assert pos.min() == 0 and pos.max() == 15  # every position of the 16-voxel box
    counts = np.bincount(pos[:, 0], minlength=16)
    assert counts.min() > 4000 / 16 * 0.75 and counts.max() < 4000 / 16 * 1.25
    centred = {T.random_box((64, 64), (16, 16), rng, center_in=fg) for _ in range(20)}
    assert centred == {((24, 40), (22, 38))}
    # near the border the box is still moved inside the array; the target stays in it
    fg[:] = False
    fg[2, 61] = True
    for _ in range(200):
        (a, b), (c, d) = T.random_box((64, 64), (16, 16), rng, center_in=fg, centred=False)
        assert 0 <= a <= 2 < b <= 64 and 0 <= c <= 61 < d <= 64


def test_augmentations_are_seeded_and_consistent():
    img = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    lab = np.zeros((1, 16, 16), bool)
    lab[0, 3:6, 2:12] = True
    aug = T.Augment(flip_axes=(-1, -2), rotate_deg=10, jitter=0.1, noise_sd=0.01)
    a1 = aug(img, lab, np.random.default_rng(5))
    a2 = aug(img, lab, np.random.default_rng(5))
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])
    assert a1[1].dtype == bool and a1[0].shape == img.shape
    # a flip moves image and label together
    fi, fl = T.random_flip(img, lab, np.random.default_rng(0), axes=(-1,), p=1.0)
    assert np.array_equal(fi, img[..., ::-1]) and np.array_equal(fl, lab[..., ::-1])
    ri, rl = T.rotate(img, lab, 0.0)
    assert ri is img and rl is lab
    ri, rl = T.rotate(img, lab, 90.0)
    assert rl.sum() == lab.sum()
    gi, _ = T.random_gamma(img, lab, np.random.default_rng(0), p=1.0)
    assert np.allclose([gi.min(), gi.max()], [img.min(), img.max()], atol=1e-5)
    assert "random_flip" in repr(aug)


def test_rotate2d_on_grid_of_steps(monkeypatch):
    seen = []
    monkeypatch.setattr(T, "rotate", lambda image, label, angle, **kw: (seen.append(angle), (image, label))[1])
    img = np.zeros((1, 9, 9), np.float32)
    for s in range(40):
        T.random_rotate2d(img, None, np.random.default_rng(s), max_deg=10, step=2)
    assert set(seen) <= set(np.arange(-10, 11, 2).tolist()) and len(set(seen)) > 3


def _case(spacing=(3.0, 1.0, 1.0)):
    z, y, x = np.indices((10, 40, 40))
    m = ((z - 5) * 3) ** 2 + (y - 20) ** 2 + (x - 22) ** 2 < 81
    img = (m * 100 + z).astype(np.float32)
    return Case("c", {"CT": img}, {"GTVp": m}, spacing, origin=(10.0, -5.0, 3.0))


def test_preprocess_crop_only_inverts_exactly():
    case = _case()
    new, rec = T.preprocess(case, crop_to_structure="GTVp", margin=2)
    assert new.shape == rec.working_shape and new.shape < case.shape
    # physical position of the crop's first voxel is the original voxel at the box start
    start = [a for a, _ in rec.box]
    assert np.allclose(new.origin, case.geometry.index_to_physical(start))
    back = T.invert(new.labels["GTVp"], rec)
    assert np.array_equal(back, case.labels["GTVp"])
    prob = T.invert(new.labels["GTVp"].astype(np.float32)[None], rec)
    assert prob.shape == (1,) + case.shape


def test_preprocess_resample_and_crop_inverts_close():
    case = _case()
    new, rec = T.preprocess(case, spacing=(1.5, 2.0, 2.0), size=(16, 16, 16))
    assert new.spacing == (1.5, 2.0, 2.0) and new.shape == (16, 16, 16)
    back = T.invert(new.labels["GTVp"], rec)
    assert back.shape == case.shape and back.dtype == bool
    ref = case.labels["GTVp"]
    dice = 2 * (back & ref).sum() / (back.sum() + ref.sum())
    assert dice > 0.85
    with pytest.raises(DataError, match="working shape"):
        T.invert(np.zeros((3, 3, 3)), rec)
    assert rec.to_dict()["resampled"]["spacing"] == [1.5, 2.0, 2.0]
