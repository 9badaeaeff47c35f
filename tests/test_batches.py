"""Device batches (npcrepro.engine.batches): the same samples as the item path, a batch at a time."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from npcrepro import transforms as T
from npcrepro.chapters.li2018.prepare import (CONTRAST_VARIANTS, Li2018Augment, _AugmentThenZscore, imadjust,
                                             imadjust_batch)
from npcrepro.chapters.xue2020.prepare import XueAugment
from npcrepro.datasets import Case
from npcrepro.engine import PatchDataset, SliceDataset, Trainer
from npcrepro.engine.batches import (batched, crop_to_box, pack_masks, resample2d, rotation2d, store_dtype,
                                     unpack_masks)
from npcrepro.engine.data import epoch_plan
from npcrepro.engine.loaders import KeyedItems
from npcrepro.errors import DataError, ParameterError


def _case(seed: int, shape=(6, 40, 48), k: int = 2) -> Case:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    img = ndimage.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32) * 50 + 300
    labels = {}
    for i in range(k):
        cy, cx = rng.integers(10, shape[1] - 10), rng.integers(10, shape[2] - 10)
        labels[f"S{i}"] = ((y - cy) ** 2 + (x - cx) ** 2 < (6 + 2 * i) ** 2) & (z >= 1) & (z <= shape[0] - 2)
    return Case(f"c{seed}", {"T1": img, "T2": img[::-1].copy()}, labels, (3.0, 1.0, 1.0))


CASES = [_case(s) for s in range(3)]


def _both(ds, batch: int = 6, n: int = 3, seed: int = 4):
    """Training batches of ``ds`` from the item path and from device batches (on the CPU), same keys."""
    maker = ds.device_batches("cpu", seed)
    keyed = KeyedItems(ds, seed)
    plan = epoch_plan(len(ds), batch, n, seed, 0, 0)
    for b in range(n):
        keys = [(0, 0, b, j, int(plan[b, j])) for j in range(batch)]
        items = [keyed[k] for k in keys]
        yield torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]), *maker.train_batch(keys)


def _close(item_x, dev_x, rtol=2e-3, border=1):
    inner = (Ellipsis, slice(border, -border or None), slice(border, -border or None))
    scale = float(item_x.abs().max())
    assert float((item_x - dev_x)[inner].abs().max()) <= rtol * scale


# ------------------------------------------------------------------------------------------ pieces
@pytest.mark.parametrize("k", [1, 3, 8, 9, 15, 20])
def test_masks_pack_and_unpack(k):
    rng = np.random.default_rng(k)
    masks = rng.random((k, 5, 7)) < 0.4
    packed = pack_masks(masks)
    assert packed.shape == (5, 7) and packed.dtype == (np.uint8 if k <= 8 else np.int16 if k <= 15 else np.int32)
    out = unpack_masks(torch.from_numpy(packed)[None], k)
    assert out.shape == (1, k, 5, 7) and out.dtype == torch.float32
    assert np.array_equal(out[0].numpy().astype(bool), masks)


def test_pack_refuses_too_many_masks():
    with pytest.raises(DataError, match="at most 63"):
        pack_masks(np.zeros((64, 2, 2), bool))


@pytest.mark.parametrize("box", [((2, 7), (3, 9)), ((-2, 4), (5, 12)), ((3, 12), (-1, 2)), ((-1, 11), (-2, 13))])
def test_crop_to_box_is_transforms_crop(box):
    arr = np.arange(2 * 10 * 11, dtype=np.float32).reshape(2, 10, 11)
    assert np.array_equal(crop_to_box(torch.from_numpy(arr), box).numpy(), T.crop(arr, box))
    masks = pack_masks(arr[:1] % 3 == 0)
    assert np.array_equal(crop_to_box(torch.from_numpy(masks), box).numpy(), T.crop(masks, box))


def test_resample_identity_and_shift():
    x = torch.rand(2, 1, 9, 13)
    eye = torch.eye(2).expand(2, 2, 2)
    assert torch.allclose(resample2d(x, eye, torch.zeros(2, 2)), x, atol=1e-5)
    shifted = resample2d(x, eye, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), padding="zeros")
    assert torch.allclose(shifted[0, 0, :, :-1], x[0, 0, :, 1:], atol=1e-5)  # input x + 1
    assert torch.allclose(shifted[1, 0, :-1], x[1, 0, 1:], atol=1e-5)        # input y + 1
    assert float(shifted[0, 0, :, -1].abs().max()) == 0.0


@pytest.mark.parametrize("angle", [-10.0, 7.5, 90.0])
def test_rotation_is_ndimage_rotate(angle):
    img = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(1, 31, 37)), 2).astype(np.float32)
    ref = ndimage.rotate(img, angle, axes=(1, 2), reshape=False, order=1, mode="nearest")
    m, off = rotation2d([angle], img.shape[-2:])
    out = resample2d(torch.from_numpy(img)[None], m, off, mode="bilinear", padding="border")[0].numpy()
    assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max() + 1e-5


def test_store_in_float16_only_where_its_rounding_is_small():
    rng = np.random.default_rng(0)
    assert store_dtype([rng.normal(size=1000)]) == torch.float16          # z-scored
    assert store_dtype([rng.random(1000)]) == torch.float16               # a [0, 1] window
    assert store_dtype([300 + 7 * rng.normal(size=1000)]) == torch.float32  # raw, large offset
    assert store_dtype([np.array([1.0, 1e5])]) == torch.float32


def test_batched_forms():
    assert batched(T.Augment((-1,), 10, 0.1, 0.05)) is not None
    assert batched(XueAugment()) is not None and batched(None) is not None
    assert batched(lambda image, label, rng: (image, label)) is None
    assert batched(T.Compose([lambda image, label, rng: (image, label)])) is None


def test_compose_draw_consumes_the_rng_as_the_call_does():
    aug = T.Compose([(T.random_flip, {"axes": (-1, -2)}), (T.random_rotate2d, {"max_deg": 10, "step": 2}),
                     (T.intensity_jitter, {}), (T.random_gamma, {})])
    img, lab = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32), np.zeros((1, 8, 8), bool)
    for s in range(20):
        a, b = np.random.default_rng(s), np.random.default_rng(s)
        aug(img, lab, a)
        aug.draw(b, 2)
        assert a.random() == b.random()


# ------------------------------------------------------------------------------------------ datasets
def test_slice_batches_are_the_item_path_samples():
    ds = SliceDataset(CASES, ["T1", "T2"], ["S0", "S1"], background_fraction=0.5, context=1,
                      augment=T.Augment((-1, -2), 10, 0.1), seed=1)
    for xi, yi, xd, yd in _both(ds):
        assert xd.shape == xi.shape and yd.shape == yi.shape and xd.dtype == torch.float32
        _close(xi, xd)
        assert float((yi != yd).float().mean()) < 0.002  # nearest-neighbour ties at a rotated edge


def test_slice_batches_crop_as_the_item_path():
    ds = SliceDataset(CASES, ["T1"], ["S0"], size=(24, 56), random_crop=True, crop_fg_prob=0.7,
                      augment=T.Augment((-1,), 0, 0.1), seed=2)
    for xi, yi, xd, yd in _both(ds):
        assert xd.shape == (6, 1, 24, 56)
        _close(xi, xd, border=0)
        assert torch.equal(yi, yd)


def test_slice_validation_batches_are_the_items():
    ds = SliceDataset(CASES, ["T1"], ["S0", "S1"], size=(32, 32))
    x, y = ds.device_batches("cpu").eval_batch([0, 3, 5])
    want = [ds[i] for i in (0, 3, 5)]
    _close(torch.stack([w[0] for w in want]), x, border=0)
    assert torch.equal(torch.stack([w[1] for w in want]), y)


def test_patch_batches_are_the_item_path_samples():
    cases = CASES + [_case(7, shape=(8, 36, 30))]  # another shape: stored row by row
    ds = PatchDataset(cases, ["T1", "T2"], ["S0"], (4, 16, 20), samples_per_case=5, fg_prob=0.6,
                      normalise=None)
    for xi, yi, xd, yd in _both(ds, batch=4):
        _close(xi, xd, border=0)
        assert torch.equal(yi, yd)
    x, y = ds.device_batches("cpu").eval_batch([0, 7, 19])
    assert torch.equal(torch.stack([ds[i][1] for i in (0, 7, 19)]), y)


def test_no_batched_augmentation_means_no_maker():
    ds = SliceDataset(CASES, ["T1"], ["S0"], augment=lambda image, label, rng: (image, label))
    assert ds.device_batches("cpu") is None


# ------------------------------------------------------------------------------------------ chapters
def test_xue2020_augmentation_batched():
    ds = SliceDataset(CASES, ["T1"], ["S0"], background_fraction=0.5, augment=XueAugment(), seed=3)
    for xi, yi, xd, yd in _both(ds):
        _close(xi, xd)
        assert float((yi != yd).float().mean()) < 0.002


def test_li2018_augmentation_batched():
    ds = SliceDataset(CASES, ["T1"], ["S0"], normalise=None, augment=_AugmentThenZscore(Li2018Augment()))
    for xi, yi, xd, yd in _both(ds):
        _close(xi, xd, rtol=5e-3)
        assert float((yi != yd).float().mean()) < 0.002


@pytest.mark.parametrize("variant", [0, 5, 17, 32])
def test_imadjust_batch_is_imadjust(variant):
    rng = np.random.default_rng(variant)
    images = np.stack([rng.gamma(2.0, 50.0, size=(20, 23)).astype(np.float32), np.full((20, 23), 3.0, np.float32)])
    lo, hi, g = CONTRAST_VARIANTS[variant]
    out = imadjust_batch(torch.from_numpy(images)[:, None], torch.tensor([lo, lo]), torch.tensor([hi, hi]),
                         torch.tensor([g, g]))[:, 0].numpy()
    for i in range(2):
        assert np.allclose(out[i], imadjust(images[i], lo, hi, g), atol=1e-5)


# ------------------------------------------------------------------------------------------ trainer
def _trainer(ds, batches: str, **kw) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    return Trainer(model, lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(out, y), ds,
                   val_data=ds, batch_size=4, iterations=6, eval_every=3, lr=1e-2, progress=False,
                   device="cpu", batches=batches, seed=5, **kw)


def test_trainer_device_batches_repeat_and_resume(tmp_path):
    from npcrepro.engine.runs import RunFolder

    ds = SliceDataset(CASES, ["T1", "T2"], ["S0", "S1"], augment=T.Augment((-1,), 10, 0.1, 0.05))
    a, b = _trainer(ds, "device"), _trainer(ds, "device")
    ha, hb = a.fit(), b.fit()
    assert a.batch_maker is not None and a.val_maker is not None
    assert [r["train_loss"] for r in ha.rows] == [r["train_loss"] for r in hb.rows]
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    (tmp_path / "r").mkdir()
    killed = _trainer(ds, "device", run=RunFolder(tmp_path / "r"), max_iterations_this_session=4)
    killed.fit()
    again = _trainer(ds, "device", run=RunFolder(tmp_path / "r"))
    hr = again.fit(resume=True)
    assert [r["train_loss"] for r in hr.rows] == [r["train_loss"] for r in ha.rows]


def test_trainer_batch_modes(monkeypatch):
    ds = SliceDataset(CASES, ["T1", "T2"], ["S0", "S1"])
    t = _trainer(ds, "auto")
    t.fit()
    assert t.batch_maker is None  # "auto" is the loader on the CPU
    monkeypatch.setenv("NPCREPRO_BATCHES", "device")
    t = _trainer(ds, "auto")
    t.fit()
    assert t.batch_maker is not None
    monkeypatch.setenv("NPCREPRO_BATCHES", "gpu")
    with pytest.raises(ParameterError, match="NPCREPRO_BATCHES"):
        _trainer(ds, "auto").fit()
    with pytest.raises(ParameterError, match="batches must be one of"):
        _trainer(ds, "anywhere")


def test_trainer_falls_back_to_the_loader_with_a_warning():
    ds = SliceDataset(CASES, ["T1", "T2"], ["S0", "S1"], augment=lambda image, label, rng: (image, label))
    t = _trainer(ds, "device")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit()
    assert t.batch_maker is None and any("cannot make batches" in str(w.message) for w in caught)
