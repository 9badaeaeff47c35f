"""Mask R-CNN (optional extra): the adapter npcrepro.models.maskrcnn and luo2020's Mask R-CNN row.

The first part runs everywhere, including the default environment without torchvision (import is
lazy, the row returns None with how to enable it, target conversion is numpy). The second part needs
torchvision (``scripts/setup_maskrcnn_env.sh``) and is skipped cleanly without it.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from npcrepro.chapters.luo2020 import maskrcnn_row as MRR
from npcrepro.errors import DataError, ParameterError
from npcrepro.models import maskrcnn as MR
from conftest import toy_ct_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_TV = importlib.util.find_spec("torchvision") is not None


# ----------------------------------------------------------------------------------- everywhere
def test_import_does_not_import_torchvision():
    code = ("import sys; import npcrepro.models.maskrcnn, npcrepro.chapters.luo2020.maskrcnn_row; "
            "import npcrepro.models; npcrepro.models.available(); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_available_tells_whether_torchvision_imports():
    assert MR.available() == HAS_TV


def test_row_without_torchvision_returns_none_with_how_to(monkeypatch):
    monkeypatch.setattr(MR, "available", lambda: False)
    said = []
    assert MRR.run_maskrcnn_row(object(), log=said.append) is None
    assert len(said) == 1 and "\n" not in said[0]
    assert "bash scripts/setup_maskrcnn_env.sh" in said[0] and "npcrepro run luo2020" in said[0]
    assert MRR.with_maskrcnn("the results", None) == "the results"


def test_segmenter_without_torchvision_raises(monkeypatch):
    monkeypatch.setattr(MR, "available", lambda: False)
    with pytest.raises(ParameterError, match="setup_maskrcnn_env"):
        MR.MaskRCNNSegmenter(2, (16, 16))


def test_boxes_from_masks_hand_checked():
    m = np.zeros((3, 6, 8), bool)
    m[0, 1:3, 2:5] = True          # rows 1-2, cols 2-4
    m[1, 4, 7] = True              # one pixel in the corner
    m[2, 0, 0] = m[2, 5, 3] = True  # two pixels: the box spans both
    boxes = MR.boxes_from_masks(m)
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [7, 4, 8, 5], [0, 0, 4, 6]])
    with pytest.raises(DataError, match="empty"):
        MR.boxes_from_masks(np.zeros((1, 4, 4), bool))
    with pytest.raises(DataError, match=r"\(M, H, W\)"):
        MR.boxes_from_masks(np.zeros((4, 4), bool))


def test_masks_to_target_structures_and_components():
    m = np.zeros((3, 8, 8), bool)
    m[0, 1:3, 1:3] = True
    m[0, 5:7, 5:8] = True          # structure 0: two components
    m[2, 3:5, 2:4] = True          # structure 1 absent, structure 2 one blob
    t = MR.masks_to_target(m)
    np.testing.assert_array_equal(t["labels"], [1, 3])
    np.testing.assert_array_equal(t["boxes"], [[1, 1, 8, 7], [2, 3, 4, 5]])
    assert t["masks"].dtype == np.uint8 and t["masks"].shape == (2, 8, 8)
    np.testing.assert_array_equal(t["masks"][0], m[0])
    c = MR.masks_to_target(m, instances="components")
    np.testing.assert_array_equal(c["labels"], [1, 1, 3])
    np.testing.assert_array_equal(c["boxes"], [[1, 1, 3, 3], [5, 5, 8, 7], [2, 3, 4, 5]])
    empty = MR.masks_to_target(np.zeros((2, 5, 4), bool))
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 5, 4)
    with pytest.raises(ParameterError):
        MR.masks_to_target(m, instances="pixels")


def test_sizes_are_plain_data_per_profile():
    for profile in ("smoke", "cpu", "gpu", "gpu-lite"):
        s = MRR.sizes_for(profile)
        assert s["backbone"] in MR.BACKBONES and s["iterations"] >= 1 and len(s["anchor_sizes"]) == 5
    assert MRR.sizes_for("cpu", iterations=7)["iterations"] == 7
    assert MRR.SIZES["gpu"]["backbone"] == "resnet50"


# ----------------------------------------------------------------------------------- with torchvision
def _discs(n=8, k=2, h=32, w=32, seed=0):
    """Slices with ``k`` discs of different brightness (structure j is the disc of brightness j)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(0.1, 0.02, (n, 1, h, w)).astype(np.float32)
    m = np.zeros((n, k, h, w), bool)
    for i in range(n):
        for j in range(k):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(3, 7)
            m[i, j] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[i, 0][m[i, j]] = 0.4 + 0.4 * j
    m[-1] = False                  # one empty slice: left out of training
    return img, m


TINY = dict(channels=16, representation=32, box_batch_size_per_image=32, rpn_post_nms_top_n_train=50,
            rpn_post_nms_top_n_test=50)


def test_trains_a_few_iterations_with_finite_loss():
    pytest.importorskip("torchvision")
    img, m = _discs()
    seg = MR.MaskRCNNSegmenter(2, (32, 32), seed=0, **TINY)
    hist = seg.fit(img, m, iterations=3, batch_size=2, lr=0.005)
    assert hist["train_slices"] == 7 and hist["skipped_slices"] == 1 and hist["iterations"] == 3
    assert len(hist["losses"]) == 3 and np.isfinite(hist["losses"]).all()
    assert set(hist["loss_parts"]) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                                       "loss_rpn_box_reg"}
    prob = seg.predict(img[:3], batch_size=2)
    assert prob.shape == (3, 2, 32, 32) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    hard = seg.predict_masks(img[:3])
    assert hard.shape == (3, 2, 32, 32) and hard.dtype == bool
    with pytest.raises(DataError, match="built for"):
        seg.predict(img[:, :, :16])
    with pytest.raises(DataError, match=r"\(N, 1, H, W\)"):
        seg.predict(img[:, 0])


def test_predict_pastes_max_over_instances_per_class(monkeypatch):
    pytest.importorskip("torchvision")
    seg = MR.MaskRCNNSegmenter(3, (4, 5), **TINY)
    a = np.zeros((4, 5), np.float32)
    a[0, 0] = 0.9
    b = np.zeros((4, 5), np.float32)
    b[0, 0], b[3, 4] = 0.2, 0.7
    dets = [{"labels": np.array([2, 2, 3]), "masks": np.stack([a, b, b]), "scores": np.array([.9, .8, .6]),
             "boxes": np.zeros((3, 4))},
            {"labels": np.zeros(0, int), "masks": np.zeros((0, 4, 5)), "scores": np.zeros(0), "boxes": np.zeros((0, 4))}]
    monkeypatch.setattr(seg, "detect", lambda images, batch_size=8: dets)
    prob = seg.predict(np.zeros((2, 1, 4, 5), np.float32))
    assert prob.shape == (2, 3, 4, 5)
    assert not prob[:, 0].any() and not prob[1].any()
    assert prob[0, 1, 0, 0] == pytest.approx(0.9) and prob[0, 1, 3, 4] == pytest.approx(0.7)
    np.testing.assert_allclose(prob[0, 2], b)


def test_resnet50_is_torchvisions_maskrcnn_resnet50_fpn():
    pytest.importorskip("torchvision")
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ours = MR.build_maskrcnn(3, (64, 64), backbone="resnet50")
    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) - 64 * 2 * 7 * 7   # one input channel, not three
    assert type(ours.backbone.body.bn1).__name__ == "BatchNorm2d"            # trainable BN from scratch
    assert ours.transform.min_size == (64,) and ours.transform.max_size == 64  # slices are not resized
    with pytest.raises(ParameterError):
        MR.build_maskrcnn(3, (64, 64), backbone="vgg16")


def test_row_on_a_toy_run_has_the_chapters_metrics_format(tmp_path):
    pytest.importorskip("torchvision")
    from npcrepro.chapters.luo2020 import report
    from npcrepro.datasets.splits import Fold
    from npcrepro.engine.results import Results

    cases = {f"t{i}": toy_ct_case(f"t{i}", i) for i in range(3)}
    structures = ["GTVp", "CTVp", "Eye_L"]
    params = {"profile": "smoke", "image_size": [16, 16], "seed": 0, "device": "cpu", "threads": 1}
    fake = SimpleNamespace(params=params, structures=structures, seeds=[0],
                           splits=lambda: [Fold(train=["t0", "t1"], test=["t2"])],
                           load_case=lambda name, channels=None, structures=None: cases[name])
    rows = MRR.run_maskrcnn_row(fake, log=None, iterations=2, batch_size=2, **TINY)
    assert len(rows) == len(structures)
    assert list(rows.columns[:5]) == ["method", "fold", "seed", "case", "structure"]
    assert {"dice", "auc", "f1", "jaccard", "soft_dice", "ref_empty", "n_slices"} <= set(rows.columns)
    assert (rows["method"] == "maskrcnn").all() and rows["ref_empty"].tolist() == [False, False, True]
    assert rows["dice"].between(0, 1).all()
    (train,) = rows.attrs["training"]
    assert train["train_slices"] == 8 and train["iterations"] == 2 and train["label"] == "Mask R-CNN"

    metrics = rows.assign(method="unet")
    res = Results(tmp_path, {"methods": [{"name": "unet", "label": "U-Net"}], "seeds": [0], "structures": structures},
                  params, metrics, pd.DataFrame([{"method": "unet", "fold": 0, "seed": 0, "train_seconds": 1.0,
                                                  "parameters": 10, "final_train_loss": 0.5, "train_slices": 8}]))
    both = MRR.with_maskrcnn(res, rows)
    assert both.methods == ["unet", "maskrcnn"] and both.label("maskrcnn") == "Mask R-CNN"
    assert list(report.means(both).index) == ["U-Net", "Mask R-CNN"]
    assert list(report.training_table(both).index) == ["U-Net", "Mask R-CNN"]
    assert res.methods == ["unet"] and len(res.metrics) == len(structures)   # the run is not changed


def test_row_rejects_unknown_sizes():
    pytest.importorskip("torchvision")
    fake = SimpleNamespace(params={"profile": "smoke"}, structures=["GTVp"], seeds=[0], splits=lambda: [])
    with pytest.raises(ParameterError, match="unknown size"):
        MRR.run_maskrcnn_row(fake, log=None, depth=3)
