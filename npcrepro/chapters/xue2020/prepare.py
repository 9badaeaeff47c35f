"""xue2020: case -> the chapter's target, CT normalisation, training slices and the real-data source.

The road (Sec. 1 of the paper, with this project's choices where it is silent)::

    Case (the CT channel P.channel in HU: CECT, the contrast-enhanced CT the paper used (Sec. 1.1), or
          CT, non-contrast; GTVp, GTVnd, SpinalCord)
      -> target "GTVp" = the primary tumour plus the retropharyngeal nodes (the paper's GTVp "includes
         the retropharyngeal lymph nodes"): GTVp united with every connected component of GTVnd whose
         centroid lies within RP_MIDLINE_MM of the midline (the spinal cord's mean x);
         on OpenKBP, PTV70 stands in for the GTVp (a planning target volume, not a GTV)
      -> that CT clipped to the soft-tissue window CT_WINDOW (HU) and scaled to [0, 1]
      -> axial 2D slices: every slice with tumour plus ``background_fraction`` as many without;
         augmentation: left-right flip, rotation, zoom and translation (one affine resampling)
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from npcrepro import transforms as T
from npcrepro.engine.batches import flip_batch, resample2d
from npcrepro.errors import DataError, ParameterError
from npcrepro.metrics.prior import PRIOR
from npcrepro.chapters.xue2020.recipe import CT_WINDOW, RP_MIDLINE_MM

__all__ = ["TARGET", "CT_WINDOW", "RP_MIDLINE_MM", "normalise_ct", "midline_x", "retropharyngeal_nodes",
           "derive_target", "xue_case", "source_structures", "XueAugment", "make_augment",
           "slice_datasets", "split_sizes", "pixel_size", "has_structure", "openkbp_data", "real_params",
           "openkbp_source", "run_channel", "reference_cases", "PRIOR", "location_prior"]

#: Name of the training/evaluation target inside the chapter's cases (the paper's GTVp, which
#: includes the retropharyngeal nodes; PTV70 on OpenKBP).
TARGET = "GTVp"


# ----------------------------------------------------------------------------------- the target
def normalise_ct(arr: np.ndarray) -> np.ndarray:
    """CT or CECT in HU -> clipped to :data:`CT_WINDOW` and scaled to [0, 1] (float32)."""
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
    # each component's mean x from its own voxels (ndimage.center_of_mass sums over the whole grid
    # once per component: 1.3 s for a 96 x 512 x 512 case, against milliseconds here)
    ids = lab[nd]
    x = np.nonzero(nd)[2]
    mean_x = np.bincount(ids, weights=x, minlength=n + 1)[1:] / np.bincount(ids, minlength=n + 1)[1:]
    mid = midline_x(case)
    keep = [i + 1 for i, c in enumerate(mean_x) if abs(c - mid) * case.spacing[2] < midline_mm]
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


def xue_case(case, rule: str = "gtvp_rpn", channel: str = "CECT"):
    """A new Case with only the CT ``channel`` (``"CECT"``, the recipe's default, or ``"CT"``) and the
    target (as ``GTVp``), its facts in ``meta["xue2020"]``; the source's own ``GTVp`` and ``GTVnd`` are
    kept as ``GTVp_primary`` and ``GTVnd`` for figures. The source case is not changed."""
    from npcrepro.datasets import Case

    if channel not in case.images:
        raise DataError(f"case {case.name}: no {channel} channel (has {sorted(case.images)}); "
                        f"xue2020's parameter channel picks CECT or CT")
    target, facts = derive_target(case, rule)
    meta = dict(case.meta, xue2020=dict(facts, rule=rule, channel=channel))
    labels = {TARGET: target}
    if rule != "ptv70":
        labels["GTVp_primary"] = case.labels["GTVp"]
        if "GTVnd" in case.labels:
            labels["GTVnd"] = case.labels["GTVnd"]
    return Case(case.name, {channel: case.images[channel]}, labels, case.spacing, case.origin,
                case.direction, meta)


def source_structures(dataset, rule: str) -> list[str]:
    """The dataset's structures the target ``rule`` needs (only those the dataset has)."""
    want = ["PTV70"] if rule == "ptv70" else ["GTVp", "GTVnd", "SpinalCord", "Body"]
    return [s for s in want if s in dataset.structures]


def pixel_size(cases) -> float:
    """Median in-plane pixel size (mm) of the cases."""
    cs = list(cases.values()) if isinstance(cases, Mapping) else list(cases)
    return float(np.median([min(c.spacing[1:]) for c in cs]))


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

    def draw(self, rng: np.random.Generator, n_channels: int = 1) -> tuple[bool, float, float, np.ndarray]:
        """(flipped, angle in radians, zoom, shift as fractions of (H, W)) for one sample."""
        flipped = bool(self.flip and rng.random() < 0.5)
        a = math.radians(rng.uniform(-self.rotate_deg, self.rotate_deg)) if self.rotate_deg else 0.0
        s = float(rng.uniform(*self.zoom))
        return flipped, a, s, rng.uniform(-self.shift, self.shift, 2)

    @staticmethod
    def affine(drawn, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, bool]:
        """(matrix, offset, flipped) of a draw on a (H, W) plane, mapping output (y, x) to input (y, x)."""
        flipped, a, s, frac = drawn
        t = frac * np.asarray(shape, float)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = rot / s  # output -> input: rotate back and shrink for zoom > 1
        c = (np.asarray(shape, float) - 1) / 2
        offset = c - m @ (c + t)
        return m, offset, flipped

    def matrix(self, rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, bool]:
        """Draw (matrix, offset, flipped) mapping output (y, x) to input (y, x)."""
        return self.affine(self.draw(rng), shape)

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

    def apply_batch(self, image, label, draws, generator=None):
        """``__call__`` on a batch (B, C, H, W) / (B, K, H, W) of tensors, one draw per sample, in one
        resampling (:mod:`npcrepro.engine.batches`)."""
        parts = [self.affine(d, image.shape[-2:]) for d in draws]
        image, label = flip_batch(image, label, [f for _, _, f in parts])
        m, off = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        image = resample2d(image, m, off, mode="bilinear", padding="border")
        label = (resample2d(label, m, off, mode="bilinear", padding="zeros") > 0.5).to(label.dtype)
        return image, label

    def __repr__(self) -> str:
        return (f"XueAugment(flip={self.flip}, rotate_deg={self.rotate_deg}, zoom={self.zoom}, "
                f"shift={self.shift})")


def make_augment(P: Mapping) -> XueAugment:
    return XueAugment(bool(P["flip"]), float(P["rotate_deg"]), tuple(P["zoom"]), float(P["shift"]))


# ----------------------------------------------------------------------------------- samplers, split
def slice_datasets(train: Sequence, val: Sequence, P: Mapping):
    """(train, validation or None) :class:`~npcrepro.engine.SliceDataset` of prepared cases."""
    from npcrepro.engine import SliceDataset

    common = dict(channels=[P["channel"]], structures=[TARGET], slices="labelled",
                  background_fraction=float(P["background_fraction"]), normalise=normalise_ct,
                  size=tuple(P["image_size"]) if P.get("image_size") else None, context=int(P["context"]))
    train_ds = SliceDataset(list(train), augment=make_augment(P), seed=int(P["seed"]), random_crop=False,
                            **common)
    val_ds = SliceDataset(list(val), seed=int(P["seed"]) + 1, **common) if val else None
    return train_ds, val_ds


def split_sizes(n: int, P: Mapping) -> tuple[int, int]:
    """(n_test, n_val): the profile's, or in the same proportions when fewer cases are available."""
    n_test, n_val, n_cases = int(P["n_test"]), int(P["n_val"]), int(P["n_cases"])
    if n - n_test - n_val >= 2:
        return n_test, n_val
    t = max(1, int(math.floor(n * n_test / n_cases + 0.5)))
    v = max(1, int(math.floor(n * n_val / n_cases + 0.5)))
    while n - t - v < 1 and t > 1:
        t -= 1
    return t, v


# ----------------------------------------------------------------------------------- real data
def has_structure(ds, name: str, structure: str) -> bool:
    try:
        case = ds.load(name, channels=["CT"], structures=[structure])
    except DataError:
        return False
    return bool(structure in case.labels and case.labels[structure].any())


def openkbp_data(P: Mapping, *, progress: bool = False):
    """The real-data source: ``P.real_cases`` OpenKBP training patients and ``P.real_test`` of its
    held-out test patients, converted once (:func:`npcrepro.datasets.adapters.cached.cached_openkbp`).
    The run trains on the first, and tests on the second (:meth:`npcrepro.engine.Chapter.split`).
    Returns (dataset or None, the names of the training cases carrying a PTV70, a sentence saying
    what happened)."""
    from npcrepro.datasets.adapters.cached import cached_openkbp

    n = int(P.get("real_cases") or 0)
    if P.get("real_data") == "off" or n < 3 or not (P.get("real_iterations") or P.get("epochs")):
        return None, [], (f"The real-data track is off in the {P['profile']} profile "
                          "(real_data='off', real_cases < 3 or no training budget).")
    ds = cached_openkbp(P["out_dir"], n, progress=progress, n_test=int(P.get("real_test") or 0))
    if ds is None:
        return None, [], ("The OpenKBP extract is not on this machine (set $NPCREPRO_SHARED_DATA or "
                          "place ../shared/data/openkbp-subset); the real-data track was skipped.")
    if "PTV70" not in ds.structures:
        return None, [], f"The converted OpenKBP cases at {ds.root} have no PTV70; the real-data track was skipped."
    names = [c for c in ds.cases if has_structure(ds, c, "PTV70")]
    if len(names) < 3:
        return None, [], f"Only {len(names)} converted OpenKBP case(s) carry a PTV70; the track was skipped."
    test = [c for c in ds.test_cases if has_structure(ds, c, "PTV70")]
    return ds, names, (f"{len(names)} OpenKBP training patients and {len(test)} of its held-out test "
                       "patients with a PTV70 (a planning target volume, mostly oropharynx cancer), which "
                       "stands in for the NPC GTVp.")


def openkbp_source(P: Mapping):
    """The OpenKBP track's data (:class:`~npcrepro.engine.chapter.Track`): (:func:`openkbp_data`'s
    dataset or None, its sentence)."""
    ds, _, note = openkbp_data(P)
    return ds, note


def real_params(P, data=None):
    """The parameters of the real-data run: PTV70 as the target, the scans' one CT channel (``CT``),
    ``real_iterations`` (else the profile's epochs), the ``real_image_size`` crop, the
    ``real_weights`` tested and the ``real_context`` neighbouring slices; a fresh run folder (no
    ``resume``). ``data`` (the track's dataset, handed to the runner as it is) is unused."""
    it = P.get("real_iterations")
    return P.replace(target="ptv70", channel="CT", iterations=int(it) if it else None,
                     epochs=None if it else P.get("epochs"), image_size=P.get("real_image_size"),
                     weights=P["real_weights"], context=int(P["real_context"]), resume="")


# ----------------------------------------------------------------------------------- a finished run's cases
def run_channel(params) -> str:
    """The CT channel a run trained on (its ``channel`` parameter; runs made before the parameter
    existed trained on ``CT``). ``params``: a run's parameters or :class:`Results`."""
    params = getattr(params, "params", params)
    return str(params.get("channel") or "CT")


_CASES: dict[tuple, object] = {}


def reference_cases(results, names=None) -> dict:
    """name -> the chapter's case (its CT channel and the derived target, as the run trained on it) of
    every case of the run's split (or of ``names``); kept per process."""
    names = list(names) if names is not None else [n for f in results.splits() for n in (*f.train, *f.val, *f.test)]
    ds, rule, channel = None, results.params.get("target", "gtvp_rpn"), run_channel(results)
    out = {}
    for n in names:
        key = (str(results.path), n)
        if key not in _CASES:
            ds = ds or results.dataset()
            _CASES[key] = xue_case(ds.load(n, channels=[channel], structures=source_structures(ds, rule)), rule,
                                   channel)
        out[n] = _CASES[key]
    return out


def location_prior(results, threshold: float):
    """The reference that reads no image: per fold, the voxel-wise mean of the target masks of its
    training and validation patients (the patients the networks were given) thresholded at ``threshold``
    (:func:`npcrepro.metrics.prior.prior_scores`), scored on its test patients on the case grid as the
    networks are. It needs cases of one grid (OpenKBP's 128 x 128 x 128). One row per test patient:
    method (:data:`PRIOR`), fold, case, dice (a DataFrame)."""
    import pandas as pd

    from npcrepro.metrics.prior import prior_scores

    rows = []
    for i, f in enumerate(results.splits()):
        cases = reference_cases(results, [*f.train, *f.val, *f.test])
        masks = {n: c.labels[TARGET] for n, c in cases.items()}
        scores = prior_scores([masks[n] for n in (*f.train, *f.val)], {n: masks[n] for n in f.test}, threshold)
        rows += [{"method": PRIOR, "fold": i, "case": n, "dice": d} for n, d in scores.items()]
    return pd.DataFrame(rows, columns=["method", "fold", "case", "dice"])
