"""xue2020's pipeline: DeepLabv3+ (MobileNetV2) vs U-Net for the primary-tumour GTV on planning CT.

The road (Sec. 1 of the paper, with this project's choices where it is silent)::

    Case (CT in HU; GTVp, GTVnd, SpinalCord)
      -> target "GTVp" = the primary tumour plus the retropharyngeal nodes (the paper's GTVp "includes
         the retropharyngeal lymph nodes"): GTVp united with every connected component of GTVnd whose
         centroid lies within ``RP_MIDLINE_MM`` of the midline (the spinal cord's mean x);
         on OpenKBP, PTV70 stands in for the GTVp (a planning target volume, not a GTV)
      -> CT clipped to the soft-tissue window CT_WINDOW (HU) and scaled to [0, 1]
      -> random split by patient: train / validation / test (120 / 15 / 15 at paper scale)
      -> axial 2D slices: every slice with tumour plus ``background_fraction`` as many without;
         augmentation: left-right flip, rotation, zoom and translation (one affine resampling)
      -> DeepLabv3+ (``xue2020_deeplabv3plus``) and U-Net (``unet2d``) trained alike: loss 1 - DSC
         (soft Dice over the batch, sigmoid), Adam lr 0.005, lr x0.8 after 5 validations without
         improvement of the validation loss, best-validation weights tested
      -> every slice of each test patient predicted, stacked back into the volume (same grid),
         thresholded at 0.5, scored in 3D per patient: DSC, JI, ASD (mm, the paper's Eq. 3 = the
         symmetric average surface distance), HD (mm, maximum)
      -> paired t-tests between the models (and Wilcoxon), inference time per slice.

The chapter notebook is ``notebooks/xue2020.ipynb``; this module holds its library code, the profile
sizes (:func:`npcrepro.profiles.register_profile`) and what the chapter chose (:data:`CHOICES`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from npcrepro import transforms as T
from npcrepro.errors import DataError, ParameterError
from npcrepro.profiles import register_choices, register_profile

__all__ = [
    "PAPER", "TARGET", "MODELS", "CT_WINDOW", "RP_MIDLINE_MM", "METRICS", "CHOICES", "REFERENCE_CHOICES",
    "normalise_ct", "midline_x", "retropharyngeal_nodes", "derive_target", "xue_case", "load_cases",
    "XueAugment", "make_augment", "make_loss", "build_model", "slice_datasets", "train_model",
    "aspp_rates_for", "pixel_size", "predict_case_mask", "time_per_slice", "Track", "prepare_track",
    "train_track", "evaluate_track",
    "run_track", "openkbp_track",
    "recipe_table", "architecture_table", "parameter_table", "comparison", "p_value_table",
    "timing_table", "training_table", "case_table", "headline", "fig_target", "fig_boxplots",
    "fig_contours", "fig_curves",
]

PAPER = "xue2020"

#: Name of the training/evaluation target inside the chapter's cases (the paper's GTVp, which
#: includes the retropharyngeal nodes; PTV70 on OpenKBP).
TARGET = "GTVp"

#: Display name -> registered model name. The order is the paper's (proposed model first).
MODELS: dict[str, str] = {"DeepLabv3+": "xue2020_deeplabv3plus", "U-Net": "unet2d"}

#: CT window (HU) clipped and scaled to [0, 1]; the paper states no intensity preprocessing.
CT_WINDOW = (-200.0, 300.0)

#: GTVnd components whose centroid is closer than this to the midline (mm, left-right) are
#: retropharyngeal. The phantom places retropharyngeal nodes 14-17 mm from the midline and level
#: II/III nodes 33-44 mm from it (:mod:`npcrepro.phantom.lesions`); 20 mm separates them.
RP_MIDLINE_MM = 20.0

#: Per-patient metrics of the paper (per-case table columns) and their paper names.
METRICS: dict[str, str] = {"dice": "DSC", "jaccard": "JI", "assd": "ASD (mm)", "hd": "HD (mm)"}
_REPORTED_METRIC = {"dice": "dsc", "jaccard": "jaccard", "assd": "assd", "hd": "hd"}

#: Where the paper is silent (or unclear): what this chapter chose. The notebook prints this table.
CHOICES: dict[str, str] = {
    "target": "GTVp united with the retropharyngeal part of GTVnd (components within "
              f"{RP_MIDLINE_MM:.0f} mm of the midline); the phantom has no separate retropharyngeal "
              "label; target='gtvp', 'gtvp_gtvnd' and 'ptv70' (OpenKBP) are the alternatives",
    "CT normalisation": f"clip to [{CT_WINDOW[0]:.0f}, {CT_WINDOW[1]:.0f}] HU (soft-tissue window), "
                        "scale to [0, 1]",
    "slices used": "all slices with tumour plus background_fraction (default 0.5) as many without, "
                   "for training and validation; every slice at test time",
    "augmentation ranges": "left-right flip p=0.5, rotation U(-10, 10) deg, zoom U(0.9, 1.1), "
                           "translation U(-10, 10) % of the slice, one bilinear resampling",
    "loss 1 - DSC": "soft Dice of sigmoid probabilities pooled over the batch (the usual Keras "
                    "dice_coef on flattened tensors), smoothing 1 voxel",
    "plateau rule": "lr x0.8 when the validation loss has not improved for 5 evaluations (Keras "
                    "ReduceLROnPlateau monitors val_loss by default; the paper says 'training metric')",
    "evaluation frequency": "once per epoch (gpu profile) or every eval_every iterations (cpu/smoke)",
    "model selection": "the weights with the lowest validation loss are tested",
    "post-processing": "none: the 0.5-thresholded slice predictions are stacked into the volume",
    "U-Net": "the plain U-Net of the project (conv-BN-ReLU, transposed-conv upsampling); widths from "
             "the profile (gpu: 64-1024, Ronneberger et al.)",
    "DeepLabv3+": "MobileNetV2 width 1.0, output stride 16, ASPP 6/12/18 with 256 channels, 48-channel "
                  "low-level reduction, separable 3x3 convs in ASPP and decoder (see the architecture "
                  "table)",
    "ASPP rates": "6/12/18 scaled by 0.98 mm / the data's pixel size (scale_aspp=True): each branch "
                  "covers the same physical context as at the paper's 0.98 mm (cpu phantom, 2 mm "
                  "pixels: 3/6/9; unscaled, the rate-12 and rate-18 branches would see mostly padding "
                  "on an 8 x 8 feature map); at 0.98 mm they are 6/12/18",
    "real-data track": "OpenKBP planning CT, PTV70 as the stand-in target, in-plane centre crop "
                       "(real_image_size) on the cpu profile",
    "distances": "3D, in mm on the CT grid; HD is the maximum (100th percentile), ASD the mean of the "
                 "two directed average surface distances (the paper's Eq. 3)",
}

#: The DeepLabv3+ design choices, this project's value and the public reference implementations'.
REFERENCE_CHOICES: list[tuple[str, str, str, str]] = [
    # (item, paper says, here, reference implementations)
    ("backbone", "'improved' MobileNetV2, 4 kinds of inverted residual block, output channels 24-320",
     "MobileNetV2 width 1.0: stem 32, stages 16-24-32-64-96-160-320 (the 1280 tail dropped)",
     "same channels in TF deeplab, Keras keras-deeplab-v3-plus, PyTorch ports"),
    ("output stride", "not stated", "16",
     "TF and Keras: 8 or 16; PyTorch ports: 16 (8 optional); mmsegmentation MobileNetV2 configs: 8"),
    ("dilated stages", "atrous convolution in the backbone",
     "stride-16 stages dilated; the first block of a dilated stage keeps the previous rate",
     "TF slim MobileNetV2: same rule; mmsegmentation: whole stage at the new rate"),
    ("ASPP rates", "'atrous spatial pyramid'", "6, 12, 18 (doubled at OS 8) + 1x1 + image pooling",
     "6/12/18 at OS 16; the published TF/Keras MobileNetV2 checkpoints use only 1x1 + image pooling"),
    ("ASPP / decoder channels", "not stated", "256 / 256", "256 everywhere"),
    ("low-level features", "1x1 conv reduces channels; stride-4 features", "24-channel stage -> 48",
     "48 everywhere"),
    ("separable convs", "atrous + depthwise separable in encoder and decoder",
     "ASPP and decoder 3x3 convs depthwise-separable", "DeepLabv3+ paper: yes; PyTorch ports: plain 3x3"),
    ("decoder", "x4 bilinear, concat, 3x3 convs, x4 bilinear", "same (two 3x3 convs)",
     "published TF/Keras MobileNetV2 checkpoints: no decoder; PyTorch ports, mmsegmentation: as here"),
]


# ----------------------------------------------------------------------------------- profiles
_COMMON_SIZES = dict(scale_aspp=True, lr=0.005, lr_factor=0.8, lr_patience=5, dice_eps=1.0,
                     output_stride=16, deeplab_width=1.0, background_fraction=0.5, flip=True, rotate_deg=10.0,
                     zoom=[0.9, 1.1], shift=0.1, target="gtvp_rpn", threshold=0.5, real_data="openkbp",
                     image_size=None)
# scale_aspp: DeepLab's ASPP rates 6/12/18 are scaled by 0.98 mm / (the data's pixel size), so that
# every branch sees the same physical context as at the paper's 0.98 mm (see CHOICES, aspp_rates_for).
register_profile(PAPER, "smoke", **_COMMON_SIZES, n_cases=5, n_val=1, n_test=2, 
                 unet_widths=[8, 16, 32, 64], batch_size=4, iterations=6, epochs=None, eval_every=3,
                 infer_batch=16, timing_slices=3, real_cases=0, real_iterations=0, real_image_size=None)
register_profile(PAPER, "cpu", **_COMMON_SIZES, n_cases=20, n_val=3, n_test=5, 
                 unet_widths=[16, 32, 64, 128, 256], batch_size=8, iterations=240, epochs=None,
                 eval_every=20, infer_batch=16, timing_slices=20, real_cases=8, real_iterations=200,
                 real_image_size=[80, 80])
register_profile(PAPER, "gpu", **_COMMON_SIZES, n_cases=150, n_val=15, n_test=15, 
                 unet_widths=[64, 128, 256, 512, 1024], batch_size=8, iterations=None, epochs=200,
                 eval_every=None, infer_batch=32, timing_slices=100, real_cases=64, real_iterations=None,
                 real_image_size=None)
register_choices(PAPER, target=["gtvp_rpn", "gtvp", "gtvp_gtvnd", "ptv70"])


# ----------------------------------------------------------------------------------- data
def normalise_ct(arr: np.ndarray) -> np.ndarray:
    """CT in HU -> clipped to :data:`CT_WINDOW` and scaled to [0, 1] (float32)."""
    return T.normalise(arr, "window", window=CT_WINDOW)


def midline_x(case) -> float:
    """The left-right midline (x index) of a case: the spinal cord's mean x, else the body's, else
    the grid centre."""
    for s in ("SpinalCord", "Body"):
        m = case.labels.get(s)
        if m is not None and m.any():
            return float(np.nonzero(m)[2].mean())
    return (case.shape[2] - 1) / 2.0


def retropharyngeal_nodes(case, midline_mm: float = RP_MIDLINE_MM) -> tuple[np.ndarray, int, int]:
    """(mask, n_rp, n_other): the connected components of GTVnd whose centroid is within
    ``midline_mm`` of the midline, and how many components were kept / left out."""
    nd = case.labels.get("GTVnd")
    if nd is None or not nd.any():
        return np.zeros(case.shape, bool), 0, 0
    lab, n = ndimage.label(nd)
    com = ndimage.center_of_mass(nd, lab, range(1, n + 1))
    mid = midline_x(case)
    keep = [i + 1 for i, c in enumerate(com) if abs(c[2] - mid) * case.spacing[2] < midline_mm]
    return np.isin(lab, keep), len(keep), n - len(keep)


def derive_target(case, rule: str = "gtvp_rpn") -> tuple[np.ndarray, dict]:
    """The chapter's target mask of ``case`` and facts about it.

    ``rule``: ``"gtvp_rpn"`` (GTVp plus retropharyngeal nodes, the paper's definition), ``"gtvp"``
    (primary only), ``"gtvp_gtvnd"`` (GTVp plus all nodes), ``"ptv70"`` (OpenKBP's PTV70 stand-in).
    """
    vox = float(np.prod(case.spacing)) / 1000.0
    if rule == "ptv70":
        if "PTV70" not in case.labels:
            raise DataError(f"case {case.name}: no PTV70 (OpenKBP stand-in for the GTVp)")
        m = case.labels["PTV70"].astype(bool)
        return m, {"target_cm3": m.sum() * vox}
    if rule not in ("gtvp_rpn", "gtvp", "gtvp_gtvnd"):
        raise ParameterError(f"unknown target rule {rule!r} (valid: gtvp_rpn, gtvp, gtvp_gtvnd, ptv70)")
    gtvp = case.labels.get("GTVp")
    if gtvp is None:
        raise DataError(f"case {case.name}: no GTVp")
    m = gtvp.astype(bool).copy()
    facts = {"gtvp_cm3": m.sum() * vox, "rp_nodes": 0, "other_nodes": 0, "rp_cm3": 0.0}
    if rule == "gtvp_rpn":
        rp, n_rp, n_other = retropharyngeal_nodes(case)
        facts.update(rp_nodes=n_rp, other_nodes=n_other, rp_cm3=float((rp & ~m).sum() * vox))
        m |= rp
    elif rule == "gtvp_gtvnd" and "GTVnd" in case.labels:
        m |= case.labels["GTVnd"]
    facts["target_cm3"] = float(m.sum() * vox)
    return m, facts


def xue_case(case, rule: str = "gtvp_rpn"):
    """A Case with only ``CT`` and the target (as ``GTVp``), its facts in ``meta["xue2020"]``; the
    source's own ``GTVp`` and ``GTVnd`` are kept as ``GTVp_primary`` and ``GTVnd`` for figures."""
    from npcrepro.datasets import Case

    if "CT" not in case.images:
        raise DataError(f"case {case.name}: no CT channel (has {sorted(case.images)})")
    target, facts = derive_target(case, rule)
    meta = dict(case.meta, xue2020=dict(facts, rule=rule))
    labels = {TARGET: target}
    if rule != "ptv70":
        labels["GTVp_primary"] = case.labels["GTVp"]
        if "GTVnd" in case.labels:
            labels["GTVnd"] = case.labels["GTVnd"]
    return Case(case.name, {"CT": case.images["CT"]}, labels, case.spacing, case.origin,
                case.direction, meta)


def load_cases(dataset, names: Sequence[str], rule: str = "gtvp_rpn") -> dict:
    """name -> :func:`xue_case` of the dataset's case (loading only what the rule needs)."""
    want = ["PTV70"] if rule == "ptv70" else ["GTVp", "GTVnd", "SpinalCord", "Body"]
    structures = [s for s in want if s in dataset.structures]
    return {n: xue_case(dataset.load(n, channels=["CT"], structures=structures), rule) for n in names}


# ----------------------------------------------------------------------------------- augmentation
class XueAugment:
    """Flips, rotation, zoom and translation of a 2D sample in one affine resampling.

    ``__call__(image, label, rng)``: image (C, H, W) float, label (K, H, W); returns both transformed
    (image bilinear with edge values outside, label bilinear then > 0.5, zero outside).
    """

    def __init__(self, flip: bool = True, rotate_deg: float = 10.0, zoom: Sequence[float] = (0.9, 1.1),
                 shift: float = 0.1):
        self.flip, self.rotate_deg = bool(flip), float(rotate_deg)
        self.zoom = (float(zoom[0]), float(zoom[1])) if zoom else (1.0, 1.0)
        self.shift = float(shift)
        if self.zoom[0] <= 0 or self.zoom[0] > self.zoom[1]:
            raise ParameterError(f"zoom must be (low, high) with 0 < low <= high, got {zoom}")

    def matrix(self, rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, bool]:
        """Draw (matrix, offset, flipped) mapping output (y, x) to input (y, x)."""
        flipped = self.flip and rng.random() < 0.5
        a = math.radians(rng.uniform(-self.rotate_deg, self.rotate_deg)) if self.rotate_deg else 0.0
        s = rng.uniform(*self.zoom)
        t = rng.uniform(-self.shift, self.shift, 2) * np.asarray(shape, float)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = rot / s  # output -> input: rotate back and shrink for zoom > 1
        c = (np.asarray(shape, float) - 1) / 2
        offset = c - m @ (c + t)
        return m, offset, flipped

    def __call__(self, image, label, rng):
        shape = image.shape[-2:]
        m, off, flipped = self.matrix(rng, shape)
        if flipped:
            image, label = image[..., ::-1], (label[..., ::-1] if label is not None else None)
        img = np.stack([ndimage.affine_transform(ch, m, off, order=1, mode="nearest") for ch in image])
        lab = None
        if label is not None:
            lab = np.stack([ndimage.affine_transform(np.asarray(ch, np.float32), m, off, order=1,
                                                     mode="constant", cval=0.0) > 0.5 for ch in label])
            lab = lab.astype(np.asarray(label).dtype, copy=False)
        return img.astype(np.float32, copy=False), lab

    def __repr__(self) -> str:
        return (f"XueAugment(flip={self.flip}, rotate_deg={self.rotate_deg}, zoom={self.zoom}, "
                f"shift={self.shift})")


def make_augment(P: Mapping) -> XueAugment:
    return XueAugment(bool(P["flip"]), float(P["rotate_deg"]), tuple(P["zoom"]), float(P["shift"]))


# ----------------------------------------------------------------------------------- model, loss
def make_loss(eps: float = 1.0) -> nn.Module:
    """1 - DSC: soft Dice of the sigmoid probabilities, pooled over the batch."""
    from npcrepro.losses import DiceLoss

    return DiceLoss(eps=eps, activation="sigmoid", batch=True)


#: Pixel size (mm) at which DeepLab's ASPP rates 6/12/18 are taken as given: the paper's CT.
PAPER_PIXEL_MM = 0.98


def aspp_rates_for(pixel_mm: float | None, scale: bool = True) -> tuple[int, ...]:
    """ASPP rates for a pixel size: (6, 12, 18) scaled by ``PAPER_PIXEL_MM / pixel_mm`` (at least 1,
    rounded), or (6, 12, 18) unscaled when ``scale`` is False or the pixel size is unknown."""
    base = (6, 12, 18)
    if not scale or not pixel_mm:
        return base
    return tuple(max(1, int(math.floor(r * PAPER_PIXEL_MM / float(pixel_mm) + 0.5))) for r in base)


def pixel_size(cases) -> float:
    """Median in-plane pixel size (mm) of the cases."""
    cs = list(cases.values()) if isinstance(cases, Mapping) else list(cases)
    return float(np.median([min(c.spacing[1:]) for c in cs]))


def build_model(label: str, P: Mapping, in_channels: int = 1, pixel_mm: float | None = None) -> nn.Module:
    """``"DeepLabv3+"`` or ``"U-Net"`` at the profile's sizes (one output: the target's logit).
    ``pixel_mm`` (the data's in-plane pixel size) sets the ASPP rates when ``P.scale_aspp``."""
    import npcrepro.models.deeplab  # noqa: F401  (registers xue2020_deeplabv3plus)
    import npcrepro.models.unet  # noqa: F401
    from npcrepro.models import build

    if label not in MODELS:
        raise ParameterError(f"unknown xue2020 model {label!r} (valid: {', '.join(MODELS)})")
    if label == "DeepLabv3+":
        rates = aspp_rates_for(pixel_mm, bool(P.get("scale_aspp", True)))
        os_ = int(P["output_stride"])
        return build(MODELS[label], in_channels=in_channels, n_classes=1, output_stride=os_,
                     width=float(P["deeplab_width"]), aspp_rates=[r * 16 // os_ for r in rates])
    return build(MODELS[label], in_channels=in_channels, n_classes=1, widths=list(P["unet_widths"]))


def slice_datasets(cases: Mapping, fold, P: Mapping):
    """(train, validation) :class:`~npcrepro.engine.SliceDataset` of the fold's patients."""
    from npcrepro.engine import SliceDataset

    common = dict(channels=["CT"], structures=[TARGET], slices="labelled",
                  background_fraction=float(P["background_fraction"]), normalise=normalise_ct,
                  size=tuple(P["image_size"]) if P.get("image_size") else None)
    train = SliceDataset([cases[n] for n in fold.train], augment=make_augment(P), seed=int(P["seed"]),
                         random_crop=False, **common)
    val = SliceDataset([cases[n] for n in fold.val], seed=int(P["seed"]) + 1, **common) if fold.val else None
    return train, val


def train_model(label: str, train_ds, val_ds, P: Mapping, *, run=None, iterations: int | None = None,
                epochs: int | None = None, progress: bool = True, pixel_mm: float | None = None):
    """Train one model with the paper's recipe; returns (model, History).

    ``iterations``/``epochs`` override the profile's; an epoch is one pass over the training slices
    (batch size from the profile). With ``epochs``, the plateau rule is checked once per epoch.
    """
    from npcrepro.engine import Trainer, seed_everything

    seed_everything(int(P["seed"]))
    model = build_model(label, P, pixel_mm=pixel_mm)
    iterations = iterations if iterations is not None else P.get("iterations")
    epochs = epochs if epochs is not None else (None if iterations else P.get("epochs"))
    if not iterations and not epochs:
        raise ParameterError("xue2020: give iterations or epochs (the profile sets one)")
    budget = {"iterations": int(iterations)} if iterations else {"epochs": int(epochs)}
    eval_every = int(P["eval_every"]) if (P.get("eval_every") and iterations) else None
    if eval_every and iterations:
        eval_every = min(eval_every, int(iterations))
    trainer = Trainer(model, make_loss(float(P["dice_eps"])), train_ds, val_data=val_ds,
                      batch_size=int(P["batch_size"]), optimizer="adam", lr=float(P["lr"]),
                      schedule={"kind": "plateau", "factor": float(P["lr_factor"]),
                                "patience": int(P["lr_patience"])},
                      eval_every=eval_every, restore_best=val_ds is not None, seed=int(P["seed"]),
                      device=P["device"], run=run, progress=progress, desc=label, **budget)
    history = trainer.fit()
    return model, history


# ----------------------------------------------------------------------------------- inference
def predict_case_mask(model: nn.Module, case, P: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(probability, mask) of the target on the case's grid: every axial slice predicted (centre
    crop/pad to ``image_size`` when set, mapped back), stacked, thresholded at ``P.threshold``."""
    from npcrepro.engine import predict_slices, prepare_case

    image, _ = prepare_case(case, ["CT"], (), normalise=normalise_ct)
    size = P.get("image_size")
    if size:
        box = tuple(((n - int(s)) // 2, (n - int(s)) // 2 + int(s)) for n, s in zip(image.shape[2:], size))
        full = ((0, image.shape[0]), (0, image.shape[1])) + box
        prob = predict_slices(model, T.crop(image, full), batch_size=int(P["infer_batch"]),
                              device=P["device"], activation="sigmoid")
        prob = T.uncrop(prob, box, image.shape[2:])
    else:
        prob = predict_slices(model, image, batch_size=int(P["infer_batch"]), device=P["device"],
                              activation="sigmoid")
    prob = prob[0]
    return prob, prob >= float(P["threshold"])


@torch.no_grad()
def time_per_slice(model: nn.Module, shape: Sequence[int], device="cpu", n: int = 20, warmup: int = 3,
                   in_channels: int = 1) -> dict:
    """Inference time of one slice of ``shape`` (H, W), batch 1, eval mode: median and mean over
    ``n`` timed runs after ``warmup`` (CUDA synchronised). Returns ms and the device."""
    dev = torch.device(device)
    was_training = model.training
    model.eval().to(dev)
    x = torch.randn(1, in_channels, *[int(s) for s in shape], device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(max(0, warmup)):
        model(x)
    sync()
    times = []
    for _ in range(max(1, n)):
        t = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - t) * 1000.0)
    model.train(was_training)
    return {"ms_median": float(np.median(times)), "ms_mean": float(np.mean(times)), "n": len(times),
            "shape": tuple(int(s) for s in shape), "device": _device_name(dev),
            "threads": torch.get_num_threads()}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from npcrepro.engine.runs import _cpu_model

    try:
        return f"CPU ({_cpu_model()}, {torch.get_num_threads()} threads)"
    except Exception:  # noqa: BLE001 - the name is decoration
        return f"CPU ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------- one track
@dataclass
class Track:
    """One experiment (phantom or real data): cases, split, trained models, per-patient results."""

    label: str
    profile: str
    cases: dict
    fold: Any
    run: Any
    models: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)
    train_seconds: dict = field(default_factory=dict)
    probs: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None
    timing: dict = field(default_factory=dict)
    train_slices: int = 0
    notes: list = field(default_factory=list)

    @property
    def test(self) -> list[str]:
        return list(self.fold.test)

    def summary(self) -> pd.DataFrame:
        """Mean ± sd, median, 95% bootstrap CI per (method, metric)."""
        from npcrepro.evaluation import summarize

        return summarize(self.table, list(METRICS), by="method")

    def __repr__(self) -> str:
        return (f"Track({self.label!r}, {len(self.fold.train)}/{len(self.fold.val)}/{len(self.fold.test)} "
                f"patients, models={list(self.models)}, run={getattr(self.run, 'path', None)})")


def prepare_track(P: Mapping, dataset, *, label: str, rule: str | None = None,
                  names: Sequence[str] | None = None, run_name: str = "phantom") -> Track:
    """Load the cases, derive the target, split by patient (holdout with ``P.n_val`` / ``P.n_test``,
    in the same proportions when the dataset is smaller) and open the run folder."""
    from npcrepro.engine import RunFolder, make_folds

    rule = rule or P["target"]
    names = list(names if names is not None else dataset.cases)
    if len(names) < 3:
        raise DataError(f"xue2020: need at least 3 cases (train/validation/test), got {len(names)}")
    n_test, n_val = _split_sizes(len(names), P)
    params = dict(P)
    params.update(track=label, rule=rule, n_cases_used=len(names))
    rf = RunFolder.create(P["out_dir"], P["profile"], PAPER, run_name, params=params, device=P["device"])
    fold = make_folds(names, "holdout", n_test=n_test, n_val=n_val, seed=int(P["seed"]), run=rf)[0]
    track = Track(label, P["profile"], load_cases(dataset, names, rule), fold, rf)
    empty = [n for n in fold.train if not track.cases[n].labels[TARGET].any()]
    if empty:
        track.notes.append(f"{len(empty)} training case(s) without any target voxel: {empty}")
    return track


def train_track(track: Track, P: Mapping, *, iterations: int | None = None, epochs: int | None = None,
                progress: bool = True, models: Sequence[str] = tuple(MODELS)) -> Track:
    """Train every model on the track's training patients (validation patients drive the plateau
    rule and model selection); each model gets a sub-run named after it."""
    train_ds, val_ds = slice_datasets(track.cases, track.fold, P)
    track.train_slices = len(train_ds)
    for m in models:
        t0 = time.perf_counter()
        model, hist = train_model(m, train_ds, val_ds, P, run=track.run.sub(MODELS[m]), iterations=iterations,
                                  epochs=epochs, progress=progress, pixel_mm=pixel_size(track.cases))
        track.train_seconds[m] = time.perf_counter() - t0
        track.models[m], track.histories[m] = model, hist
    return track


def evaluate_track(track: Track, P: Mapping) -> pd.DataFrame:
    """Predict every test patient with every trained model (all slices, stacked into the volume),
    score in 3D (per-patient table, also ``metrics.csv``), time inference per slice, write
    ``summary.json`` and mark the run done. Returns the per-patient table."""
    from npcrepro.evaluation import evaluate_cases

    shape = (tuple(P["image_size"]) if P.get("image_size")
             else next(iter(track.cases.values())).shape[1:])
    tables = []
    for m, model in track.models.items():
        probs, masks = {}, {}
        for n in track.test:
            prob, mask = predict_case_mask(model, track.cases[n], P)
            probs[n], masks[n] = prob, mask
            track.run.sub(MODELS[m]).write_prediction(n, TARGET, mask, track.cases[n].geometry)
        track.probs[m], track.masks[m] = probs, masks
        tables.append(evaluate_cases({n: {TARGET: masks[n]} for n in track.test}, track.cases, method=m))
        track.timing[m] = time_per_slice(model, shape, P["device"], n=int(P["timing_slices"]))
    track.table = pd.concat(tables, ignore_index=True)
    rf = track.run
    rf.write_metrics(track.table)
    fold = track.fold
    rf.write_summary({"paper": PAPER, "track": track.label, "profile": track.profile,
                      "split": {"train": len(fold.train), "val": len(fold.val), "test": len(fold.test)},
                      "train_slices": track.train_slices, "train_seconds": track.train_seconds,
                      "timing": track.timing, "summary": track.summary().to_dict(orient="records")})
    rf.mark_done()
    return track.table


def run_track(P: Mapping, dataset, *, label: str, rule: str | None = None, names: Sequence[str] | None = None,
              iterations: int | None = None, epochs: int | None = None, run_name: str = "phantom",
              progress: bool = True, models: Sequence[str] = tuple(MODELS)) -> Track:
    """:func:`prepare_track`, :func:`train_track` and :func:`evaluate_track` in one call."""
    track = prepare_track(P, dataset, label=label, rule=rule, names=names, run_name=run_name)
    train_track(track, P, iterations=iterations, epochs=epochs, progress=progress, models=models)
    evaluate_track(track, P)
    return track


def _split_sizes(n: int, P: Mapping) -> tuple[int, int]:
    """(n_test, n_val): the profile's, or in the same proportions when fewer cases are available."""
    n_test, n_val, n_cases = int(P["n_test"]), int(P["n_val"]), int(P["n_cases"])
    if n - n_test - n_val >= 2:
        return n_test, n_val
    t = max(1, int(math.floor(n * n_test / n_cases + 0.5)))
    v = max(1, int(math.floor(n * n_val / n_cases + 0.5)))
    while n - t - v < 1 and t > 1:
        t -= 1
    return t, v


def openkbp_track(P: Mapping, *, progress: bool = False) -> tuple[Track | None, str]:
    """The real-data track: a few OpenKBP patients converted into ``<out_dir>/_data``, PTV70 as the
    stand-in target, both models trained with ``P.real_iterations``. Returns (track or None, a
    sentence saying what happened)."""
    from npcrepro.datasets import open_dataset
    from npcrepro.datasets.adapters import convert
    from npcrepro.paths import shared_data

    n = int(P.get("real_cases") or 0)
    if n < 3 or not (P.get("real_iterations") or P.get("epochs")):
        return None, (f"The real-data track is off in the {P['profile']} profile "
                      "(real_cases < 3 or no training budget).")
    src = shared_data("openkbp-subset")
    if src is None:
        return None, ("The OpenKBP extract is not on this machine (set $NPCREPRO_SHARED_DATA or place "
                      "../shared/data/openkbp-subset); the real-data track was skipped.")
    dst = Path(P["out_dir"]) / "_data" / f"openkbp-xue2020-n{n}"
    if (dst / "dataset.json").exists():
        ds = open_dataset(dst)
    else:
        ds = convert("openkbp", src, dst, limit=n, progress=progress, overwrite=True).dataset
    if "PTV70" not in ds.structures:
        return None, f"The converted OpenKBP cases at {dst} have no PTV70; the real-data track was skipped."
    names = [c for c in ds.cases if _has(ds, c, "PTV70")]
    if len(names) < 3:
        return None, f"Only {len(names)} converted OpenKBP case(s) carry a PTV70; the track was skipped."
    it = P.get("real_iterations")
    P = dict(P, image_size=P.get("real_image_size"))
    track = run_track(P, ds, label="OpenKBP (PTV70 stand-in)", rule="ptv70", names=names,
                      iterations=int(it) if it else None, epochs=None if it else P.get("epochs"),
                      run_name="openkbp", progress=progress)
    return track, (f"{len(names)} OpenKBP patients converted from {src}; PTV70 (a planning target "
                   "volume, mostly oropharynx cancer) stands in for the NPC GTVp.")


def _has(ds, name: str, structure: str) -> bool:
    try:
        case = ds.load(name, channels=["CT"], structures=[structure])
    except DataError:
        return False
    return bool(structure in case.labels and case.labels[structure].any())


# ----------------------------------------------------------------------------------- tables
def recipe_table(P: Mapping) -> pd.DataFrame:
    """The paper's recipe items (value and source, from :mod:`npcrepro.papers`) next to this run's."""
    from npcrepro import papers

    recipe = papers.info(PAPER).recipe
    budget = (f"{P['epochs']} epochs" if not P.get("iterations") else f"{P['iterations']} iterations")
    ours = {
        "optimizer": "Adam (torch defaults: betas 0.9/0.999, eps 1e-8)",
        "lr": f"{P['lr']}",
        "schedule": f"x{P['lr_factor']} after {P['lr_patience']} validations without improvement",
        "batch_size": f"{P['batch_size']}",
        "epochs": budget,
        "loss": "1 - soft DSC (batch)",
        "augmentation": f"flip, rotation ±{P['rotate_deg']:g}°, zoom {P['zoom'][0]}-{P['zoom'][1]}, "
                        f"translation ±{100 * P['shift']:g}%",
        "input_size": "whole slices of the grid" if not P.get("image_size") else f"{P['image_size']}",
        "preprocessing": f"CT window {CT_WINDOW[0]:.0f}..{CT_WINDOW[1]:.0f} HU -> [0, 1]",
        "framework": f"PyTorch {torch.__version__}",
    }
    rows = []
    for item, e in recipe.items():
        v = e.get("value")
        rows.append({"item": item, "paper": "not stated" if v is None else str(v),
                     "source": e.get("source") or "", "this run": ours.get(item, "—")})
    return pd.DataFrame(rows)


def architecture_table() -> pd.DataFrame:
    """:data:`REFERENCE_CHOICES` as a table."""
    return pd.DataFrame(REFERENCE_CHOICES, columns=["item", "paper", "here", "reference implementations"])


def parameter_table(P: Mapping, pixel_mm: float | None = None) -> pd.DataFrame:
    """Parameters, output stride and ASPP rates of both models at the profile's sizes (for data of
    ``pixel_mm`` pixels) and, below paper scale, the paper-scale DeepLabv3+ variants."""
    import npcrepro.models.deeplab as D
    from npcrepro.models import count_parameters

    rows = []
    for label in MODELS:
        m = build_model(label, P, pixel_mm=pixel_mm)
        rows.append({"model": label, "sizes": P["profile"], "parameters": count_parameters(m),
                     "output stride": getattr(m, "output_stride", None) or 2 ** (len(P["unet_widths"]) - 1),
                     "config": (f"MobileNetV2 width {P['deeplab_width']}, OS {P['output_stride']}, "
                                f"ASPP rates {'/'.join(map(str, m.aspp.rates))}"
                                if label == "DeepLabv3+" else f"widths {list(P['unet_widths'])}")})
    if P["profile"] != "gpu":
        for label, kw in (("DeepLabv3+", {}), ("DeepLabv3+", {"separable": False})):
            m = D.DeepLabV3Plus(1, 1, **kw)
            rows.append({"model": label + (" (plain 3x3 heads)" if kw else ""), "sizes": "paper scale",
                         "parameters": count_parameters(m), "output stride": m.output_stride,
                         "config": "MobileNetV2 width 1.0, OS 16, ASPP rates 6/12/18"
                                   + (", plain 3x3 convs as the PyTorch ports" if kw else "")})
    return pd.DataFrame(rows)


def comparison(track: Track):
    """DSC, JI, ASD, HD of both models: reported (Sec. 2) vs reproduced (this track)."""
    from npcrepro import papers
    from npcrepro.evaluation import compare_with_paper

    rep = papers.reported(PAPER, table="Sec. 2")
    rep = rep[rep["metric"].isin(["dsc", "jaccard", "assd", "hd"])]
    table = compare_with_paper(rep, track.table, paper=PAPER, data_source=track.label, profile=track.profile,
                               metrics=["dsc", "jaccard", "assd", "hd"], digits=2)
    table.notes.append("Reproduced: mean ± sd over the test patients, each scored in 3D from its stacked "
                       "slice predictions (0.5 threshold); ASD is the symmetric average surface distance "
                       "(the paper's Eq. 3), HD the maximum Hausdorff distance, both in mm.")
    n_empty = int(track.table["pred_empty"].sum())
    if n_empty:
        table.notes.append(f"{n_empty} prediction(s) were empty; their distances are the image diagonal.")
    return table


def p_value_table(track: Track) -> pd.DataFrame:
    """Paired t-test (and Wilcoxon) DeepLabv3+ vs U-Net per metric: reported vs reproduced p."""
    from npcrepro.evaluation import paired_tests
    from npcrepro.papers import get

    a, b = list(MODELS)
    tests = paired_tests(track.table, a, b, list(METRICS), on=("case", "structure"))
    P_REP = get(PAPER).P_VALUES
    rows = []
    for _, r in tests.iterrows():
        rec = P_REP[_REPORTED_METRIC[r["metric"]]]
        rep = f"< {rec.high:g}" if rec.high is not None else f"{rec.value:g}"
        rows.append({"metric": METRICS[r["metric"]], "n": int(r["n"]),
                     "mean difference (DeepLabv3+ - U-Net)": r["mean_diff"],
                     "p, paired t-test (reported)": rep,
                     "p, paired t-test (reproduced)": r["p_t"],
                     "p, Wilcoxon (reproduced)": r["p_wilcoxon"]})
    return pd.DataFrame(rows)


def timing_table(track: Track) -> pd.DataFrame:
    """Inference ms per slice and training time: reported (the paper's GPU, full-size slices, full
    training) vs reproduced (this machine, this profile)."""
    from npcrepro import papers

    rep = papers.reported(PAPER, table="Sec. 2")
    recipe = papers.info(PAPER).recipe
    setting = (f"{recipe['hardware']['value']}; {'x'.join(map(str, recipe['input_size']['value']))} slices; "
               f"{recipe['epochs']['value']} epochs")
    rows = []
    for m in MODELS:
        ms = rep[(rep["method"] == m) & (rep["metric"] == "ms_per_slice")]["value"]
        hours = rep[(rep["method"] == m) & (rep["metric"] == "train_hours")]["value"]
        t = track.timing.get(m, {})
        h = track.histories.get(m)
        rows.append({"model": m,
                     "ms per slice (reported)": float(ms.iloc[0]) if len(ms) else None,
                     "training hours (reported)": float(hours.iloc[0]) if len(hours) else None,
                     "setting (reported)": setting,
                     "ms per slice (reproduced)": t.get("ms_median"),
                     "training seconds (reproduced)": track.train_seconds.get(m),
                     "iterations (reproduced)": h.iterations if h is not None else None,
                     "slice size (reproduced)": "x".join(map(str, t.get("shape", ()))),
                     "device (reproduced)": t.get("device")})
    return pd.DataFrame(rows)


def training_table(track: Track) -> pd.DataFrame:
    """Per model: iterations, wall seconds, best validation loss and where, final learning rate."""
    rows = []
    for m, h in track.histories.items():
        f = h.frame
        rows.append({"model": m, "training slices": track.train_slices, "iterations": h.iterations,
                     "seconds": round(track.train_seconds.get(m, h.seconds), 1),
                     "best validation loss": h.best_val_loss, "at iteration": h.best_iteration,
                     "final train loss": h.final_train_loss,
                     "final lr": float(f["lr"].iloc[-1]) if len(f) else None,
                     "lr cuts": int((f["lr"].diff() < 0).sum()) if len(f) else 0})
    return pd.DataFrame(rows)


def case_table(track: Track) -> pd.DataFrame:
    """One row per patient: split, stage, target volume, retropharyngeal nodes kept / left out."""
    rows = []
    fold = track.fold
    for n, c in track.cases.items():
        f = c.meta.get("xue2020", {})
        rows.append({"case": n, "split": "train" if n in fold.train else "val" if n in fold.val else "test",
                     "T": c.meta.get("t_stage", "—"), "N": c.meta.get("n_stage", "—"),
                     "shape (z, y, x)": c.shape,
                     "spacing (mm)": tuple(round(s, 2) for s in c.spacing),
                     "target (cm³)": round(float(f.get("target_cm3", 0.0)), 2),
                     "RP nodes in target": f.get("rp_nodes", "—"),
                     "other nodes left out": f.get("other_nodes", "—")})
    return pd.DataFrame(rows)


#: Best validation loss (1 - soft DSC) at or above which a model is reported as not having learned:
#: its validation DSC never rose above 0.2.
NOT_LEARNED_LOSS = 0.8


def training_note(track: Track) -> str:
    """One sentence on whether each model learned, from its best validation loss (1 - soft DSC).

    A model that did not learn makes the comparison one between a failed training and a working one,
    which the chapter must say next to the numbers rather than let them speak for the architecture."""
    best = {m: h.best_val_loss for m, h in track.histories.items() if h.best_val_loss is not None}
    if not best:
        return "No validation loss was recorded, so whether the models learned is not known."
    failed = [m for m, v in best.items() if v >= NOT_LEARNED_LOSS]
    losses = ", ".join(f"{m} {v:.2f}" for m, v in best.items())
    if not failed:
        return f"Both networks learned (best validation loss, 1 − soft DSC: {losses})."
    return (f"{' and '.join(failed)} did not learn in this run (best validation loss, 1 − soft DSC: "
            f"{losses}; at or above {NOT_LEARNED_LOSS} the validation DSC never exceeded "
            f"{1 - NOT_LEARNED_LOSS:.1f}), so the comparison below measures a failed training, not the "
            "architecture. At this budget the paper's recipe is fragile: another seed, or the same seed "
            "with a different floating-point summation order, can decide whether a network trains at all.")


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def headline(track: Track) -> dict[str, str]:
    """Formatted numbers of a finished track for the chapter's prose (glued as ``xue2020_<key>``):
    split sizes, grid, per-model mean ± sd of each metric, paired-test p-values, timings, and the
    paper's reported values beside them (from :mod:`npcrepro.papers`)."""
    from npcrepro import papers
    from npcrepro.evaluation import format_mean_sd

    short = {"DeepLabv3+": "deeplab", "U-Net": "unet"}
    key = {"dice": "dsc", "jaccard": "ji", "assd": "asd", "hd": "hd"}
    c0 = next(iter(track.cases.values()))
    out = {"n_cases": str(len(track.cases)), "n_train": str(len(track.fold.train)),
           "n_val": str(len(track.fold.val)), "n_test": str(len(track.fold.test)),
           "train_slices": str(track.train_slices), "profile": track.profile, "data": track.label,
           "grid": " × ".join(map(str, c0.shape)),
           "spacing": " × ".join(f"{s:.2f}".rstrip("0").rstrip(".") for s in c0.spacing) + " mm",
           "n_rp": str(sum(1 for c in track.cases.values() if c.meta.get("xue2020", {}).get("rp_nodes"))),
           "threads": str(torch.get_num_threads()), "training_note": training_note(track)}
    rep = papers.reported(PAPER, table="Sec. 2")
    means = {}
    for m, sm in short.items():
        t = track.table[track.table["method"] == m] if track.table is not None else None
        for col, k in key.items():
            unit = " mm" if col in ("assd", "hd") else ""
            if t is not None and len(t):
                v = t[col].to_numpy(float)
                sd = float(v.std(ddof=1)) if len(v) > 1 else None
                out[f"{k}_{sm}"] = format_mean_sd(float(v.mean()), sd, 2) + unit
                means[(m, col)] = float(v.mean())
            r = rep[(rep["method"] == m) & (rep["metric"] == _REPORTED_METRIC[col])]
            if len(r):
                out[f"rep_{k}_{sm}"] = format_mean_sd(float(r["value"].iloc[0]), r["sd"].iloc[0], 2) + unit
        tm = track.timing.get(m)
        if tm:
            out[f"ms_{sm}"] = f"{tm['ms_median']:.0f}"
            out["timing_device"] = tm["device"]
            out["timing_shape"] = "×".join(map(str, tm["shape"]))
        r = rep[(rep["method"] == m) & (rep["metric"] == "ms_per_slice")]
        if len(r):
            out[f"rep_ms_{sm}"] = f"{float(r['value'].iloc[0]):g}"
        if m in track.train_seconds:
            out[f"train_s_{sm}"] = f"{track.train_seconds[m]:.0f}"
            out["iterations"] = str(track.histories[m].iterations)
    if track.table is not None and set(short) <= set(track.table["method"]):
        pt = p_value_table(track).set_index("metric")
        for col, k in key.items():
            out[f"p_{k}"] = _fmt_p(pt.loc[METRICS[col], "p, paired t-test (reproduced)"])
            out[f"rep_p_{k}"] = str(pt.loc[METRICS[col], "p, paired t-test (reported)"])
        better = max(short, key=lambda m: means.get((m, "dice"), -1))
        out["better_dsc"] = better
        out["dsc_diff"] = f"{means[('DeepLabv3+', 'dice')] - means[('U-Net', 'dice')]:+.2f}"
    return out


# ----------------------------------------------------------------------------------- figures
COLOURS = {"manual": "red", "DeepLabv3+": "lime", "U-Net": "dodgerblue"}


def fig_target(track: Track, margin_mm: float = 45.0):
    """How the target is built on one case with a retropharyngeal node: the source GTVp (red), the
    retropharyngeal nodes added (orange) and the nodes left out (cyan, dashed)."""
    import matplotlib.pyplot as plt

    with_rp = [n for n, c in track.cases.items() if c.meta.get("xue2020", {}).get("rp_nodes")]
    name = with_rp[0] if with_rp else next(iter(track.cases))
    c = track.cases[name]
    gtvp = c.labels.get("GTVp_primary", c.labels[TARGET])
    added = c.labels[TARGET] & ~gtvp
    left_out = c.labels.get("GTVnd", np.zeros(c.shape, bool)) & ~c.labels[TARGET]
    score = added.sum(axis=(1, 2)) * 1000 + gtvp.sum(axis=(1, 2))
    z = int(score.argmax())
    box = T.bbox(c.labels[TARGET][z] | left_out[z]) or ((0, c.shape[1]), (0, c.shape[2]))
    my, mx = int(round(margin_mm / c.spacing[1])), int(round(margin_mm / c.spacing[2]))
    ys = slice(max(0, box[0][0] - my), min(c.shape[1], box[0][1] + my))
    xs = slice(max(0, box[1][0] - mx), min(c.shape[2], box[1][1] + mx))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(_window(c.images["CT"][z][ys, xs]), cmap="gray", vmin=0, vmax=1)
    for m, col, ls in ((gtvp, "red", "solid"), (added, "orange", "solid"), (left_out, "cyan", "dashed")):
        if m[z][ys, xs].any():
            ax.contour(m[z][ys, xs], levels=[0.5], colors=col, linewidths=1.4, linestyles=ls)
    f = c.meta.get("xue2020", {})
    ax.set_title(f"{name}, slice {z}: GTVp (red), retropharyngeal nodes added (orange),\n"
                 f"other nodes left out (cyan); {f.get('rp_nodes', 0)} RP / "
                 f"{f.get('other_nodes', 0)} other node components", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return fig


def fig_boxplots(track: Track):
    """The paper's Fig. 3: per-patient DSC, JI, ASD, HD of both models; box 25-75 %, whiskers 10-90 %,
    every patient as a dot."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    models = [m for m in MODELS if m in set(track.table["method"])]
    rng = np.random.default_rng(0)
    for ax, (col, name) in zip(axes, METRICS.items()):
        data = [track.table.loc[track.table["method"] == m, col].to_numpy(float) for m in models]
        bp = ax.boxplot(data, whis=(10, 90), widths=0.5, patch_artist=True, showfliers=False)
        for patch, m in zip(bp["boxes"], models):
            patch.set_facecolor(COLOURS[m])
            patch.set_alpha(0.35)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=12, color="k", zorder=3)
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(models)
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"{track.label}, {track.profile} profile, {len(track.test)} test patients "
                 "(box 25-75 %, whiskers 10-90 %)", fontsize=10)
    fig.tight_layout()
    return fig


def _window(img: np.ndarray) -> np.ndarray:
    return np.clip((img - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]), 0, 1)


def fig_contours(track: Track, n: int = 3, margin_mm: float = 40.0):
    """The paper's Fig. 4: for up to ``n`` test patients, the slice with the largest manual area;
    manual contour red, DeepLabv3+ green, U-Net blue; zoomed to the tumour (± ``margin_mm``)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = sorted(track.test, key=lambda k: -track.cases[k].labels[TARGET].sum())[:n]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        case = track.cases[name]
        ref = case.labels[TARGET]
        z = int(ref.sum(axis=(1, 2)).argmax())
        box = T.bbox(ref[z]) or ((0, ref.shape[1]), (0, ref.shape[2]))
        my, mx = (int(round(margin_mm / case.spacing[1])), int(round(margin_mm / case.spacing[2])))
        ys = slice(max(0, box[0][0] - my), min(ref.shape[1], box[0][1] + my))
        xs = slice(max(0, box[1][0] - mx), min(ref.shape[2], box[1][1] + mx))
        ax.imshow(_window(case.images["CT"][z][ys, xs]), cmap="gray", vmin=0, vmax=1)
        ax.contour(ref[z][ys, xs], levels=[0.5], colors=COLOURS["manual"], linewidths=1.5)
        dsc = []
        for m in MODELS:
            if m in track.masks and name in track.masks[m]:
                msk = track.masks[m][name][z][ys, xs]
                if msk.any():
                    ax.contour(msk, levels=[0.5], colors=COLOURS[m], linewidths=1.2)
                row = track.table[(track.table["method"] == m) & (track.table["case"] == name)]
                if len(row):
                    dsc.append(f"{m} {float(row['dice'].iloc[0]):.2f}")
        ax.set_title(f"{name}, slice {z}\n3D DSC: " + ", ".join(dsc), fontsize=9)
        ax.axis("off")
    handles = [Line2D([0], [0], color=c, lw=2) for c in COLOURS.values()]
    fig.legend(handles, ["manual (reference)", "DeepLabv3+", "U-Net"], loc="lower center", ncol=3,
               frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def fig_curves(track: Track):
    """Training and validation loss (1 - DSC) and the learning rate of both models."""
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.4))
    for m, h in track.histories.items():
        f = h.frame
        if f.empty:
            continue
        ax0.plot(f["iteration"], f["train_loss"], color=COLOURS[m], ls="--", label=f"{m} train")
        if f["val_loss"].notna().any():
            ax0.plot(f["iteration"], f["val_loss"], color=COLOURS[m], label=f"{m} validation")
        ax1.plot(f["iteration"], f["lr"], color=COLOURS[m], label=m)
    ax0.set_xlabel("iteration")
    ax0.set_ylabel("1 - DSC")
    ax0.legend(fontsize=8)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("learning rate")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig
