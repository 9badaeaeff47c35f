"""luo2020: the Mask R-CNN row of Table 1, on the chapter's own run (optional: needs torchvision).

:func:`run_maskrcnn_row` trains torchvision's Mask R-CNN (:mod:`npcrepro.models.maskrcnn`, from
scratch) on the same folds, patients, labelled slices, in-plane crop and CT window as the chapter's
other methods (it reads them from the chapter's run folder), predicts each test patient's labelled
slices, and scores them with the chapter's own :func:`~npcrepro.chapters.luo2020.methods.score_rows`.
It returns rows in the format of the run's ``metrics.csv`` (method ``"maskrcnn"``), so
:func:`with_maskrcnn` can add them to the run's :class:`~npcrepro.engine.results.Results` and every
table of :mod:`~npcrepro.chapters.luo2020.report` shows the row. Nothing is written into the run
folder.

Where torchvision does not import (the project's default environment: torch 2.13.0 has no
torchvision build here) it prints how to enable it and returns None.

Choices (the paper says nothing about its Mask R-CNN beyond citing it):

* **one model for all structures as classes**, not one per structure: the paper trains each baseline
  once on slices carrying all 14 structures ("14 different types of tissue in each image"), as the
  chapter does for U-Net and FCN-8; Mask R-CNN's per-class mask head predicts each structure's mask
  independently, so overlapping structures (GTVp inside CTVp) stay representable. It is also 14 times
  cheaper than a model per structure;
* each structure on a slice is one instance (its tight box, its mask); slices of the training patients
  whose crop holds no structure are left out (Mask R-CNN's losses need an object);
* its own multi-task loss (RPN objectness and boxes, box class and regression, per-class mask BCE),
  not the chapter's Dice + focal: the loss is part of the method; SGD with momentum 0.9 and warm-up as
  in torchvision's detection recipe, x0.9 ten times over the run as the chapter's schedule;
* probability map per structure = maximum over that class's detections (score >= 0.5) of the pasted
  mask probabilities, thresholded at 0.5 like every other method.

Sizes per profile are plain data (:data:`SIZES`); keyword arguments of :func:`run_maskrcnn_row`
override them.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np

from npcrepro.chapters.luo2020 import prepare as prep
from npcrepro.errors import DataError, ParameterError

__all__ = ["METHOD", "LABEL", "SIZES", "enable_message", "sizes_for", "slice_arrays", "run_maskrcnn_row",
           "with_maskrcnn"]

METHOD = "maskrcnn"
LABEL = "Mask R-CNN"

_CPU_MODEL = dict(backbone="resnet18", channels=64, representation=256, box_batch_size_per_image=128,
                  rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                  rpn_post_nms_top_n_test=150)

#: Mask R-CNN's sizes per profile of the chapter (plain data). ``backbone``/``channels``/
#: ``representation``: :func:`npcrepro.models.maskrcnn.build_maskrcnn`; the smoke and cpu profiles use
#: a ResNet-18 FPN at 64 channels (one step of batch 4 at 96 x 80 takes about 1 s on one core), the
#: gpu profiles torchvision's ``maskrcnn_resnet50_fpn`` at its own widths.
SIZES: dict[str, dict[str, Any]] = {
    "smoke": dict(_CPU_MODEL, channels=16, representation=64, iterations=4, batch_size=2, lr=0.01,
                  anchor_sizes=(8, 16, 32, 64, 128)),
    "cpu": dict(_CPU_MODEL, iterations=300, batch_size=4, lr=0.01, anchor_sizes=(8, 16, 32, 64, 128)),
    "gpu": dict(backbone="resnet50", channels=256, representation=1024, iterations=20000, batch_size=8,
                lr=0.02, anchor_sizes=(16, 32, 64, 128, 256)),
}
SIZES["gpu-lite"] = dict(SIZES["gpu"], iterations=3000)

_FIT_KEYS = ("iterations", "batch_size", "lr", "optimizer", "weight_decay", "warmup", "lr_gamma", "lr_decays",
             "grad_clip")


def enable_message() -> str:
    """One line: why the row is not run here and how to enable it."""
    from npcrepro.models.maskrcnn import ENABLE_HINT

    return f"Mask R-CNN row not run: torchvision does not import in this environment. To run it, {ENABLE_HINT}."


def sizes_for(profile: str, **overrides) -> dict[str, Any]:
    """:data:`SIZES` of ``profile`` (the cpu sizes for an unknown one) with ``overrides``."""
    return {**SIZES.get(profile, SIZES["cpu"]), **overrides}


def slice_arrays(prepared) -> tuple[np.ndarray, np.ndarray]:
    """A prepared case's labelled slices as the chapter's networks see them: images (z', 1, h, w)
    float32 (CT windowed to [0, 1], cropped to the chapter's box) and masks (z', K, h, w) bool of
    ``prepared.structures`` (all False for a structure the case lacks)."""
    from npcrepro import transforms as T

    case, idx = prepared.case, prepared.idx
    image = prep.slice_image(prepared)                         # (1, z', h, w)
    target = np.stack([np.asarray(case.labels[s], bool)[idx] if s in case.labels
                       else np.zeros((len(idx),) + tuple(case.shape[1:]), bool)
                       for s in prepared.structures])          # (K, z', y, x)
    if prepared.box is not None:
        target = T.crop(target, ((0, target.shape[0]), (0, target.shape[1])) + tuple(prepared.box))
    return np.ascontiguousarray(image.transpose(1, 0, 2, 3)), np.ascontiguousarray(target.transpose(1, 0, 2, 3))


def _stack(arrays, what: str) -> np.ndarray:
    shapes = {a.shape[2:] for a in arrays if len(a)}
    if not shapes:
        raise DataError(f"Mask R-CNN: the {what} patients have no labelled slice")
    if len(shapes) > 1:
        raise DataError(f"Mask R-CNN: the {what} slices differ in size {sorted(shapes)}; set image_size "
                        "(the chapter's in-plane crop) so that every slice has one size")
    return np.concatenate([a for a in arrays if len(a)])


def run_maskrcnn_row(results, P: Mapping[str, Any] | None = None, *, folds=None,
                     log: Callable[[str], Any] | None = print, **overrides):
    """Train and score Mask R-CNN on the folds of the chapter's run ``results``.

    ``results``: the luo2020 run (:class:`~npcrepro.engine.results.Results`) whose splits, patients,
    structures and ``image_size`` are used; ``P``: the chapter's parameters (default: the run's
    ``params.json``; ``profile``, ``seed``, ``device``, ``threads``, ``infer_batch`` are read);
    ``folds``: fold indices to run (default: every fold of the run); ``overrides``: entries of
    :data:`SIZES` (``iterations=50``, ``backbone="resnet50"`` ...).

    Returns a DataFrame with one row per (fold, test patient, structure) in the run's ``metrics.csv``
    format (method ``"maskrcnn"``, seed, DSC, AUC, F1, JSC, soft DSC, ...), with the training facts per
    fold in ``.attrs["training"]`` (a list of dicts in the run's ``training.csv`` format) and the sizes
    used in ``.attrs["sizes"]``; or None, after logging
    :func:`enable_message`, when torchvision does not import.
    """
    from npcrepro.models import maskrcnn as MR

    say = log or (lambda _m: None)
    if not MR.available():
        say(enable_message())
        return None
    import pandas as pd
    import torch

    from npcrepro.chapters.luo2020.methods import score_rows
    from npcrepro.profiles import resolve_device

    P = dict(results.params if P is None else P)
    S = sizes_for(str(P.get("profile", "cpu")), **overrides)
    unknown = set(overrides) - set(SIZES["cpu"]) - set(_FIT_KEYS) - {
        "upscale", "image_mean", "image_std", "score_threshold", "mask_threshold", "detections_per_img",
        "instances", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "box_fg_iou_thresh", "box_bg_iou_thresh"}
    if unknown:
        raise ParameterError(f"run_maskrcnn_row: unknown size(s) {sorted(unknown)} (valid: {sorted(SIZES['cpu'])} "
                             f"and {list(_FIT_KEYS)})")
    fit_args = {k: S.pop(k) for k in _FIT_KEYS if k in S}
    structures = tuple(results.structures)
    image_size = P.get("image_size", results.params.get("image_size"))
    seed = int(results.seeds[0] if results.seeds else P.get("seed", 0))
    device = resolve_device(str(P.get("device") or "auto"))
    splits = results.splits()
    fold_ids = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    if any(not 0 <= f < len(splits) for f in fold_ids):
        raise ParameterError(f"run_maskrcnn_row: folds {fold_ids} outside the run's {len(splits)} fold(s)")

    cache: dict[str, Any] = {}

    def prepared(name: str):
        if name not in cache:
            case = results.load_case(name, channels=["CT"], structures=list(structures))
            cache[name] = prep.prepare(case, structures, image_size)
        return cache[name]

    threads = P.get("threads")
    before = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(int(threads))
    rows, training = [], []
    try:
        for k in fold_ids:
            split = splits[k]
            train = [prepared(n) for n in list(split.train) + list(split.val)]
            arrays = [slice_arrays(p) for p in train]
            images = _stack([a[0] for a in arrays], "training")
            masks = _stack([a[1] for a in arrays], "training")
            say(f"Mask R-CNN fold {k + 1}/{len(splits)}: {len(train)} training patients, {len(images)} "
                f"labelled slices of {images.shape[2]} x {images.shape[3]} pixels, {S['backbone']} FPN, "
                f"{fit_args.get('iterations')} iterations")
            seg = MR.MaskRCNNSegmenter(len(structures), images.shape[2:], seed=seed + 1000 * k, device=device, **S)
            hist = seg.fit(images, masks, log=say, log_every=max(1, int(fit_args.get("iterations", 100)) // 5),
                           **fit_args)
            training.append({"method": METHOD, "fold": k, "seed": seed, "train_seconds": hist["seconds"],
                             "label": LABEL, "iterations": hist["iterations"], "parameters": seg.parameters_count(),
                             "final_train_loss": hist["final_train_loss"], "train_slices": hist["train_slices"],
                             "backbone": S["backbone"]})
            for name in split.test:
                t0 = time.perf_counter()
                p = prepared(name)
                if len(p.idx):
                    img, _ = slice_arrays(p)
                    prob = seg.predict(img, batch_size=int(P.get("infer_batch") or 8)).transpose(1, 0, 2, 3)
                    probs = prep.to_grid(prob, p)
                else:
                    probs = {s: np.zeros(p.case.shape, np.float32) for s in structures}
                hard = {s: v >= seg.mask_threshold for s, v in probs.items()}
                sec = time.perf_counter() - t0
                for r in score_rows(probs, hard, p):
                    rows.append({"method": METHOD, "fold": k, "seed": seed, **r, "seconds": sec})
    finally:
        torch.set_num_threads(before)
    out = pd.DataFrame(rows)
    out.attrs["training"] = training            # plain data (pandas compares attrs when concatenating)
    out.attrs["sizes"] = {**S, **fit_args}
    return out


def with_maskrcnn(results, rows):
    """A copy of ``results`` with the Mask R-CNN rows (:func:`run_maskrcnn_row`) added to its metrics
    and training tables and ``"maskrcnn"`` (label "Mask R-CNN") to its methods, so the report's tables
    (Table 1 comparison, means, per structure, per fold) show the row. ``rows`` None returns
    ``results`` unchanged. The run folder is not touched; figures that read predictions from disk skip
    the method."""
    import dataclasses
    import pandas as pd

    if rows is None:
        return results
    info = dict(results.info)
    info["methods"] = [m for m in info.get("methods", []) if m.get("name") != METHOD] + [
        {"name": METHOD, "label": LABEL, "info": {"model": "torchvision maskrcnn", **rows.attrs.get("sizes", {})}}]

    def plain(df):
        df = df.copy()
        df.attrs = {}
        return df

    metrics = pd.concat([plain(results.metrics[results.metrics["method"] != METHOD]), plain(rows)],
                        ignore_index=True)
    training = results.training
    extra = pd.DataFrame(rows.attrs.get("training") or [])
    if len(extra):
        training = pd.concat([plain(training[training["method"] != METHOD]),
                              extra[[c for c in extra.columns if c in training.columns]]], ignore_index=True)
    return dataclasses.replace(results, info=info, metrics=metrics, training=training)
