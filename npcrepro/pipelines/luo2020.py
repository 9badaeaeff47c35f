"""luo2020's pipeline: 14 structures on 2D CT slices, the two-stage U-Net, its baselines and ablations.

The road (Sec. 3 of the paper, with this project's choices where it is silent)::

    Case (CT, 14 structure masks)
      -> CT clipped to [-1000, 1000] HU and scaled to [0, 1]; axial slices that contain any of the
         14 structures ("removed the image without the label")
      -> 5-fold cross-validation BY PATIENT (the paper does not say by what; slices of one patient
         in both parts would leak anatomy), the profile runs the first ``max_folds`` folds
      -> every method trained on the training patients' slices with the same recipe:
         beta * two-sided Dice + (1 - beta) * focal on sigmoid outputs, Adam, lr decayed x0.9
         ten times over the run (see :func:`lr_schedule_table` for what the paper's "every 10
         iterations" does), no augmentation, no model selection
      -> the test patients' labelled slices predicted, thresholded at 0.5, scored per patient and
         structure: DSC, AUC (rank formula), F1, JSC (+ the soft L2 DSC of Eq. 4).

Methods (:data:`METHODS`): the paper's rows "U-Net", "FCN-8" and "Ours" (two stages + MSP), and two
ablations that test the paper's two claims with the same code: "Two-stage, no MSP" and "One-stage +
MSP". Stage 1 *is* a five-level U-Net, so the U-Net row (same widths, same blocks) is also the
"one stage, no MSP" corner of the 2 x 2 ablation. "Mask R-CNN" needs torchvision; see
:func:`maskrcnn_note`.

Overlapping targets: CTV2 (CTVp) contains the primary GTV ("locref"), so one softmax class per
structure cannot describe a voxel in both. Every structure gets its own sigmoid
output (multi-label), the loss scores each channel separately, and each structure is thresholded on
its own. (The alternative, a painting order into one label map, would have to erase the GTV or the
CTV wherever they overlap.)
"""
from __future__ import annotations

import functools
import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from npcrepro import metrics as M
from npcrepro import transforms as T
from npcrepro.errors import DataError, ParameterError
from npcrepro.profiles import register_choices, register_profile

__all__ = [
    "PAPER", "STRUCTURES", "OPENKBP_STRUCTURES", "METHODS", "CHOICES", "CLAIMS", "CT_WINDOW",
    "METRIC_COLUMNS", "StagewiseLoss", "DiceFocal", "make_loss", "build_method", "prior_init",
    "method_label", "method_table", "maskrcnn_note", "schedule_spec", "lr_schedule_table", "lr_underflow",
    "audit_table", "structures_for", "openkbp_dataset", "real_sizes", "load_cases", "labelled_slices",
    "slice_dataset", "predict_slices_of", "score_case", "train_fold", "run", "Results", "comparison",
    "fold_means", "per_structure_table", "ablation_table", "claims_table", "fig_case", "fig_qualitative",
    "fig_dsc_per_fold", "fig_boxplots",
]

PAPER = "luo2020"

#: The paper's 14 structures (Sec. 3.1) -> the phantom's structure names. "locref" is read as the
#: primary-tumour localisation reference (GTVp) and "CTV2" as the primary clinical target (CTVp).
STRUCTURES: dict[str, str] = {
    "locref": "GTVp",
    "CTV2": "CTVp",
    "CTVnd": "CTVnd",
    "Mandible L": "Mandible_L",
    "Mandible R": "Mandible_R",
    "Parotid L": "Parotid_L",
    "Parotid R": "Parotid_R",
    "Brain Stem": "Brainstem",
    "Spinal Cord": "SpinalCord",
    "Eyes L": "Eye_L",
    "Eyes R": "Eye_R",
    "Optic Nerves L": "OpticNerve_L",
    "Optic Nerves R": "OpticNerve_R",
    "Optic Chiasm": "Chiasm",
}

#: OpenKBP's structures (project names) used on the real-data track, in this order when present:
#: its seven organs, then the planning target volumes.
OPENKBP_STRUCTURES = ("Brainstem", "SpinalCord", "Parotid_L", "Parotid_R", "Mandible", "Esophagus",
                      "Larynx", "PTV70", "PTV63", "PTV56")

#: CT intensity window (HU) mapped to [0, 1]; the paper states no normalisation.
CT_WINDOW = (-1000.0, 1000.0)

#: Method key -> (label, model name, fixed model arguments). The widths come from the profile.
METHODS: dict[str, tuple[str, str, dict]] = {
    "unet": ("U-Net", "unet2d", {}),
    "fcn8": ("FCN-8", "fcn8s", {}),
    "ours": ("Ours", "luo2020_two_stage", {"two_stage": True, "msp": "both"}),
    "two_stage_no_msp": ("Two-stage, no MSP", "luo2020_two_stage", {"two_stage": True, "msp": "none"}),
    "one_stage_msp": ("One-stage + MSP", "luo2020_two_stage", {"two_stage": False, "msp": "stage1"}),
}

#: Per-(case, structure) metric columns of the result table.
METRIC_COLUMNS = ("dice", "auc", "f1", "jaccard", "soft_dice", "precision", "recall")

#: Where the paper is silent: what this chapter chose (the notebook prints this table).
CHOICES: dict[str, str] = {
    "structure mapping": "locref -> GTVp, CTV2 -> CTVp, the other twelve by name (phantom names)",
    "overlapping targets": "one sigmoid output per structure (multi-label); each thresholded at 0.5",
    "CT normalisation": f"clip to {CT_WINDOW[0]:.0f}..{CT_WINDOW[1]:.0f} HU, scale to [0, 1]",
    "cross-validation unit": "patients (5 folds); slices of a patient never straddle train and test",
    "validation / model selection": "none: the last weights are tested (the paper kept 'the model that "
                                    "performs the best on test data', i.e. selected on the test set)",
    "optimiser, batch size": "Adam (Keras default betas), batch size from the profile",
    "learning rate": "the paper's 1e-3 in the gpu profile; 3e-3 in the smoke and cpu profiles, whose "
                     "runs are a few hundred iterations instead of the paper's tens of thousands",
    "loss constants": "beta 0.9, focal alpha 0.75 (foreground weight) and gamma 2, Dice epsilon 0.5 "
                      "(the paper gives ranges only; see the chapter for why not 0.5 / 0.25)",
    "Dice sums": "over every pixel of the batch, per structure (batch Dice, as a Keras Dice over the "
                 "batch tensor), not per slice",
    "loss of each step": "the loss is applied to both stages' outputs and averaged (deep supervision)",
    "learning-rate decay": "x0.9 ten times over the run (the 'every 10 epochs of 100' reading); the "
                           "literal 'every 10 iterations' is shown numerically and available as "
                           "lr_schedule='literal'",
    "widths": "stage 1 and U-Net share widths (doubling per level); stage 2 is three levels",
    "threads": "1 torch thread in the smoke and cpu profiles (on a shared 2-core machine a second thread "
               "spent most of its time waiting and made training steps several times slower); the "
               "torch default in the gpu profile",
    "MSP block": "stride-1 average pooling 1/3/5/7, concatenated, 1x1 conv-BN-ReLU; at the bottleneck "
                 "of each stage",
    "stage 2 input": "the image concatenated with stage 1's sigmoid probabilities; trained end to end",
    "FCN-8": "VGG16-style encoder with BatchNorm, trained from scratch (no ImageNet weights offline)",
    "output initialisation": "every method's output starts at probability 0.01 per structure (bias "
                             "log(0.01/0.99), weights N(0, 0.01): the focal-loss paper's prior init)",
    "augmentation": "none (the paper names none)",
    "metrics": "per patient over its labelled slices; structures absent from a patient's reference "
               "are left out of the means; DSC is the hard Dice of the 0.5-thresholded mask, the soft "
               "L2 DSC of Eq. (4) is reported beside it",
}

# ----------------------------------------------------------------------------------- profiles
_COMMON_SIZES = dict(k_folds=5, lr_gamma=0.9, lr_every=10, lr_schedule="scaled", lr_decays=10,
                     beta=0.9, focal_alpha=0.75, focal_gamma=2.0, dice_eps=0.5, batch_dice=True,
                     prior=0.01, deep_supervision=True,
                     methods=["unet", "fcn8", "ours", "two_stage_no_msp", "one_stage_msp"],
                     real_data="openkbp", real_methods=["unet", "ours"])
register_profile(PAPER, "smoke", **_COMMON_SIZES, n_cases=3, max_folds=1, image_size=[64, 48],
                 stage1_widths=[4, 8, 8, 16, 16], stage2_widths=[4, 8, 8], fcn_widths=[4, 8, 8, 16, 16],
                 fcn_channels=16, batch_size=4, iterations=4, lr=3e-3, infer_batch=16, real_cases=0,
                 real_iterations=0, real_image_size=[64, 64], threads=1)
register_profile(PAPER, "cpu", **_COMMON_SIZES, n_cases=10, max_folds=2, image_size=[96, 80],
                 stage1_widths=[8, 16, 32, 64, 64], stage2_widths=[8, 16, 32], fcn_widths=[8, 16, 32, 64, 64],
                 fcn_channels=64, batch_size=8, iterations=200, lr=3e-3, infer_batch=32, real_cases=6,
                 real_iterations=100, real_image_size=[64, 64], threads=1)
register_profile(PAPER, "gpu", **_COMMON_SIZES, n_cases=40, max_folds=5, image_size=None,
                 stage1_widths=[32, 64, 128, 256, 512], stage2_widths=[32, 64, 128],
                 fcn_widths=[64, 128, 256, 512, 512], fcn_channels=1024, batch_size=16, iterations=20000,
                 lr=1e-3, infer_batch=32, real_cases=64, real_iterations=10000,
                 real_image_size=None, threads=None)
register_choices(PAPER, lr_schedule=["scaled", "literal"], real_data=["openkbp", "off"])


# ----------------------------------------------------------------------------------- loss
class StagewiseLoss(nn.Module):
    """Apply ``base`` to every stage's output and average (luo2020: "the loss function of each step").

    ``forward(output, target)``: ``output`` is a logit tensor or a tuple/list of them (the two-stage
    model with ``deep_supervision=True`` returns ``(final, rough)`` in training mode); ``weights``
    (default equal) are normalised to sum to 1.
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.base = base
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, output, target) -> torch.Tensor:
        outs = list(output) if isinstance(output, (list, tuple)) else [output]
        w = self.weights[: len(outs)] if self.weights is not None else [1.0] * len(outs)
        if len(w) != len(outs) or sum(w) <= 0:
            raise ParameterError(f"StagewiseLoss: {len(outs)} outputs but weights {self.weights}")
        total = sum(wi * self.base(o, target) for wi, o in zip(w, outs))
        return total / sum(w)


class DiceFocal(nn.Module):
    """luo2020's Eq. (3): ``beta * Dice + (1 - beta) * Focal`` on sigmoid outputs, one per structure.

    The Dice part is :class:`~npcrepro.losses.TwoSidedDiceLoss` (Eq. 1, foreground and background
    terms) and the focal part :class:`~npcrepro.losses.FocalLoss` (Eq. 2). With ``batch_dice=True``
    (default) the sums of Eq. (1) run over every pixel of the batch, per structure -- how a Keras
    Dice over the batch tensor reads "n = 1..N" -- instead of per slice: a structure absent from one
    slice then does not contribute a term that can only push its probabilities to zero.

    Shapes: ``logits`` and ``target`` (N, K, H, W); returns a scalar.
    """

    def __init__(self, beta: float = 0.5, alpha: float = 0.25, gamma: float = 2.0, eps: float = 0.5,
                 batch_dice: bool = True):
        super().__init__()
        from npcrepro.losses import FocalLoss, TwoSidedDiceLoss

        if not 0 <= beta <= 1:
            raise ParameterError(f"beta must be in [0, 1], got {beta}")
        self.beta, self.batch_dice = float(beta), bool(batch_dice)
        self.dice = TwoSidedDiceLoss(eps=eps, activation="sigmoid")
        self.focal = FocalLoss(alpha=alpha, gamma=gamma, activation="sigmoid")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4:
            raise DataError(f"luo2020 loss expects (N, K, H, W) logits, got shape {tuple(logits.shape)}")
        if self.batch_dice:  # (N, K, H, W) -> (1, K, N, H, W): one Dice per structure over the batch
            d = self.dice(logits.transpose(0, 1).unsqueeze(0), target.transpose(0, 1).unsqueeze(0))
        else:
            d = self.dice(logits, target)
        return self.beta * d + (1.0 - self.beta) * self.focal(logits, target)


def make_loss(beta: float = 0.5, alpha: float = 0.25, gamma: float = 2.0, eps: float = 0.5,
              batch_dice: bool = True) -> StagewiseLoss:
    """:class:`DiceFocal` applied to every stage's output (:class:`StagewiseLoss`)."""
    return StagewiseLoss(DiceFocal(beta, alpha, gamma, eps, batch_dice))


# ----------------------------------------------------------------------------------- models
def method_label(key: str) -> str:
    """Display name of a method key (``"ours"`` -> ``"Ours"``)."""
    if key not in METHODS:
        raise ParameterError(f"unknown luo2020 method {key!r} (valid: {', '.join(METHODS)})")
    return METHODS[key][0]


def build_method(key: str, sizes: Mapping[str, Any], n_classes: int, in_channels: int = 1) -> nn.Module:
    """The network of method ``key`` at the profile's widths."""
    import npcrepro.models.fcn  # noqa: F401  (registers fcn8s)
    import npcrepro.models.luo2020  # noqa: F401  (registers luo2020_two_stage)
    import npcrepro.models.unet  # noqa: F401
    from npcrepro.models import build

    method_label(key)
    _, name, fixed = METHODS[key]
    S = sizes
    if name == "unet2d":
        model = build(name, in_channels=in_channels, n_classes=n_classes, widths=list(S["stage1_widths"]))
    elif name == "fcn8s":
        model = build(name, in_channels=in_channels, n_classes=n_classes, widths=list(S["fcn_widths"]),
                      fc_channels=int(S["fcn_channels"]), fc_kernel=7 if int(S["fcn_channels"]) >= 1024 else 3)
    else:
        model = build(name, in_channels=in_channels, n_classes=n_classes, stage1_widths=list(S["stage1_widths"]),
                      stage2_widths=list(S["stage2_widths"]),
                      deep_supervision=bool(S.get("deep_supervision", True)), **fixed)
    if S.get("prior"):
        prior_init(model, float(S["prior"]))
    return model


def prior_init(model: nn.Module, prior: float = 0.01) -> nn.Module:
    """Initialise the output layer(s) so that every structure starts at probability ``prior``: weights
    N(0, 0.01) and bias log(prior / (1 - prior)) -- the initialisation the focal loss was introduced
    with (Lin et al. 2017), which keeps the many background pixels from swamping the first updates.
    Applied to U-Net's head, both heads of the two-stage network, and FCN-8s's last upsampling bias
    (its weights stay bilinear)."""
    from npcrepro.models.fcn import FCN8s

    if not 0 < prior < 1:
        raise ParameterError(f"prior must be in (0, 1), got {prior}")
    bias = math.log(prior / (1 - prior))
    if isinstance(model, FCN8s):
        heads, last = [model.score_fr], [model.up8]
    else:
        heads = [m for m in (getattr(model, "head", None), getattr(model, "head1", None),
                             getattr(model, "head2", None)) if m is not None]
        last = heads
    if not heads:
        raise ParameterError(f"prior_init: no output layer found in {type(model).__name__}")
    with torch.no_grad():
        for h in heads:
            nn.init.normal_(h.weight, 0.0, 0.01)
            nn.init.zeros_(h.bias)
        for h in last:
            h.bias.fill_(bias)
    return model


def maskrcnn_note() -> tuple[bool, str]:
    """(torchvision importable, a sentence for the chapter) about the Mask R-CNN row of Table 1."""
    if importlib.util.find_spec("torchvision") is None:
        return False, ("Mask R-CNN is not run: it needs torchvision, which is not importable here (there "
                       "is no CPU build in this environment). Its Table 1 row is shown as reported only.")
    return True, ("torchvision is importable, but this chapter does not train Mask R-CNN: it is an "
                  "instance-detection model whose training targets (boxes and per-instance masks) and "
                  "loss differ from the semantic pipeline every other row shares. Its Table 1 row is "
                  "shown as reported only.")


# ----------------------------------------------------------------------------------- schedule
def schedule_spec(sizes: Mapping[str, Any], iterations: int) -> dict:
    """The Trainer's schedule: ``lr_schedule="literal"`` decays x``lr_gamma`` every ``lr_every``
    iterations (as written); ``"scaled"`` spreads ``lr_decays`` decays evenly over the run."""
    mode = sizes.get("lr_schedule", "scaled")
    gamma = float(sizes.get("lr_gamma", 0.9))
    if mode == "literal":
        every = int(sizes.get("lr_every", 10))
    elif mode == "scaled":
        every = max(1, int(iterations) // int(sizes.get("lr_decays", 10)))
    else:
        raise ParameterError(f"lr_schedule must be 'scaled' or 'literal', got {mode!r}")
    return {"kind": "exponential", "every": every, "gamma": gamma}


def lr_underflow(lr: float = 1e-3, gamma: float = 0.9, every: int = 10, below: float = 1e-8) -> int:
    """First iteration at which ``lr * gamma ** (t // every)`` is below ``below``."""
    if not 0 < gamma < 1:
        raise ParameterError(f"gamma must be in (0, 1), got {gamma}")
    k = math.ceil(math.log(below / lr) / math.log(gamma))
    while lr * gamma ** k >= below:
        k += 1
    return int(k * every)


def lr_schedule_table(lr: float = 1e-3, gamma: float = 0.9, every: int = 10, *, slices: int = 7112,
                      batch_sizes: Sequence[int] = (1, 8, 32), epochs: int = 100,
                      at_epochs: Sequence[int] = (0, 1, 2, 5, 10, 50, 100)) -> pd.DataFrame:
    """The paper's schedule taken literally (x``gamma`` every ``every`` iterations) on its training
    set of ``slices`` slices: the learning rate at the start of given epochs, for a few batch sizes
    (the paper gives none). Float32 (what the GPU computes in) stops at about 1.4e-45."""
    rows = []
    for b in batch_sizes:
        ipe = math.ceil(slices / b)
        for e in at_epochs:
            t = e * ipe if e < epochs else epochs * ipe
            exp = t // every
            log10 = math.log10(lr) + exp * math.log10(gamma)
            rows.append({"batch size": b, "iterations per epoch": ipe, "epoch": e, "iteration": t,
                         "lr (literal)": lr * gamma ** exp if log10 > -300 else 0.0,
                         "log10 lr": log10,
                         "float32 value": float(np.float32(lr * gamma ** exp)) if log10 > -300 else 0.0})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- audit
def audit_table(reported: pd.DataFrame, tol: float = 5e-5) -> pd.DataFrame:
    """Internal-consistency check of a table of DSC, F1 and JSC per method (long format, columns
    method/metric/value, metrics ``dsc``, ``f1``, ``jaccard``).

    For one set of hard masks F1 = DSC exactly and JSC = DSC / (2 - DSC) <= DSC. The same holds
    for means over cases of F1 and DSC, and mean JSC <= mean DSC (JSC <= DSC per case). Returns one
    row per method: the three numbers, the JSC implied by the DSC, and whether each identity holds
    (within ``tol``, half the last printed digit).
    """
    need = {"method", "metric", "value"}
    if not need <= set(reported.columns):
        raise DataError(f"audit_table needs columns {sorted(need)}, got {list(reported.columns)}")
    wide = reported.pivot_table(index="method", columns="metric", values="value", aggfunc="first", sort=False)
    missing = {"dsc", "f1", "jaccard"} - set(wide.columns)
    if missing:
        raise DataError(f"audit_table: no {sorted(missing)} values in the table")
    out = pd.DataFrame({"DSC": wide["dsc"], "F1": wide["f1"], "JSC": wide["jaccard"]})
    out["JSC implied by DSC"] = out["DSC"] / (2 - out["DSC"])
    out["F1 = DSC"] = (out["F1"] - out["DSC"]).abs() <= 2 * tol
    out["JSC <= DSC"] = out["JSC"] <= out["DSC"] + 2 * tol
    out["consistent"] = out["F1 = DSC"] & out["JSC <= DSC"]
    out.index.name = "method"
    return out


# ----------------------------------------------------------------------------------- data
def structures_for(dataset_structures: Sequence[str]) -> list[str]:
    """The structures a dataset offers this chapter: those of the paper's 14 (phantom names) it has, in
    the paper's order, then OpenKBP's other organs and PTVs it has; every structure of the dataset when
    it has none of them."""
    have = list(dataset_structures)
    out = [s for s in STRUCTURES.values() if s in have]
    out += [s for s in OPENKBP_STRUCTURES if s in have and s not in out]
    if out:
        return out
    if not have:
        raise DataError("the dataset declares no structures")
    return have


def openkbp_dataset(out_dir: str | Path, n_cases: int, *, progress: bool = False):
    """Alias of :func:`npcrepro.datasets.adapters.openkbp.cached_openkbp` (kept for the leaderboard)."""
    from npcrepro.datasets.adapters.openkbp import cached_openkbp

    return cached_openkbp(out_dir, n_cases, progress)


def real_sizes(sizes: Mapping[str, Any]) -> dict:
    """The sizes of the real-data track: the profile's, with ``real_image_size``, ``real_iterations`` and
    ``real_methods`` in place of the phantom's (OpenKBP grids are 128 x 128 at about 4 mm)."""
    S = dict(sizes)
    S.update(image_size=S.get("real_image_size"), iterations=int(S.get("real_iterations") or 0),
             methods=list(S.get("real_methods") or ["unet", "ours"]))
    return S


def _normaliser():
    return functools.partial(T.normalise, method="window", window=CT_WINDOW)


def load_cases(dataset, names: Sequence[str], structures: Sequence[str], channel: str = "CT") -> dict:
    """name -> Case with ``channel`` and those of ``structures`` the dataset has."""
    have = [s for s in structures if s in dataset.structures]
    return {n: dataset.load(n, channels=[channel], structures=have) for n in names}


def labelled_slices(case, structures: Sequence[str]) -> np.ndarray:
    """Axial indices of the slices that contain any of ``structures`` (the paper's slice selection)."""
    any_ = np.zeros(case.shape, bool)
    for s in structures:
        if s in case.labels:
            any_ |= case.labels[s]
    return T.slices_with(any_, axis=0)


def slice_dataset(cases: Sequence, structures: Sequence[str], image_size, channel: str = "CT", seed: int = 0):
    """Labelled axial CT slices of ``cases`` (centre crop/pad to ``image_size`` when given)."""
    from npcrepro.engine import SliceDataset

    return SliceDataset(list(cases), [channel], list(structures), slices="labelled",
                        size=tuple(image_size) if image_size else None, normalise=_normaliser(), seed=seed)


def _centre_box(shape: Sequence[int], size: Sequence[int]) -> tuple:
    """The centred crop/pad box :class:`~npcrepro.engine.SliceDataset` uses (same rounding)."""
    return tuple(((n - int(s)) // 2, (n - int(s)) // 2 + int(s)) for n, s in zip(shape, size))


def predict_slices_of(model: nn.Module, case, structures: Sequence[str], image_size=None, *,
                      channel: str = "CT", batch_size: int = 32,
                      device="cpu") -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """Sigmoid probabilities (K, z', y, x) of ``case``'s labelled slices, the slice indices, and the
    in-plane crop box (the region of the image the model saw; None: all)."""
    from npcrepro.engine import predict_slices, prepare_case

    image, _ = prepare_case(case, [channel], (), normalise=_normaliser())
    idx = labelled_slices(case, structures)
    image = image[:, idx]
    box = None
    if image_size:
        box = _centre_box(image.shape[2:], image_size)
        image = T.crop(image, ((0, image.shape[0]), (0, image.shape[1])) + tuple(box))
    prob = predict_slices(model, image, batch_size=batch_size, device=device, activation="sigmoid")
    return prob, idx, box


def score_case(prob: np.ndarray, case, structures: Sequence[str], idx: np.ndarray, box=None,
               threshold: float = 0.5) -> list[dict]:
    """Per-structure rows (DSC, AUC by the rank formula, F1, JSC, soft DSC, precision, recall) of one
    patient over its labelled slices ``idx`` (and inside ``box``: voxels the model never saw are
    predicted background)."""
    rows = []
    for k, s in enumerate(structures):
        ref = case.labels.get(s)
        ref = np.zeros((len(idx),) + case.shape[1:], bool) if ref is None else ref[idx]
        p = np.zeros(ref.shape, np.float32)
        if box is not None:
            (y0, y1), (x0, x1) = box
            # the crop box may reach outside the slice (padding): keep the part inside
            sy0, sx0 = max(y0, 0), max(x0, 0)
            sy1, sx1 = min(y1, ref.shape[1]), min(x1, ref.shape[2])
            p[:, sy0:sy1, sx0:sx1] = prob[k][:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        else:
            p = prob[k]
        pred = p >= threshold
        tp, fp, fn, _ = M.confusion(pred, ref)
        rows.append({"structure": s, "dice": M.dice(pred, ref), "auc": M.auc(p, ref), "f1": M.f1(pred, ref),
                     "jaccard": M.jaccard(pred, ref), "soft_dice": M.soft_dice(p, ref),
                     "precision": M.precision(pred, ref), "recall": M.recall(pred, ref),
                     "ref_voxels": int(ref.sum()), "pred_voxels": int(pred.sum()),
                     "ref_empty": not ref.any(), "pred_empty": not pred.any(), "n_slices": int(len(idx))})
    return rows


# ----------------------------------------------------------------------------------- training
def _train_one(key: str, train_ds, sizes: Mapping[str, Any], n_classes: int, *, run=None, device="cpu",
               seed: int = 0, progress: bool = False):
    from npcrepro.engine import Trainer, seed_everything

    S = sizes
    seed_everything(seed)
    model = build_method(key, S, n_classes)
    iterations = int(S["iterations"])
    loss = make_loss(S["beta"], S["focal_alpha"], S["focal_gamma"], S["dice_eps"], bool(S.get("batch_dice", True)))
    trainer = Trainer(model, loss, train_ds,
                      batch_size=int(S["batch_size"]), iterations=iterations, optimizer="adam", lr=float(S["lr"]),
                      schedule=schedule_spec(S, iterations), eval_every=max(1, iterations // 10), seed=seed,
                      device=device, run=run, progress=progress, desc=method_label(key), restore_best=False)
    hist = trainer.fit()
    return model, hist


def train_fold(fold, index: int, run, *, data: str, structures: Sequence[str], methods: Sequence[str],
               sizes: Mapping[str, Any], device="cpu", seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One cross-validation fold: train every method on ``fold.train`` patients' labelled slices, predict
    and score ``fold.test`` patients. Writes per method a sub-run (curves, checkpoints), ``training.csv``
    (seconds, iterations, parameters, final training loss) and ``qualitative.npz`` (one test slice,
    reference and every method's probabilities) for Fig. 3. Module level, so that
    :func:`npcrepro.engine.run_folds` can run it in a worker. ``sizes["threads"]`` (if set) is the
    number of torch threads while it runs."""
    S = dict(sizes)
    threads = torch.get_num_threads()
    if S.get("threads"):
        torch.set_num_threads(int(S["threads"]))
    try:
        return _train_fold(fold, index, run, data=data, structures=structures, methods=methods, sizes=S,
                           device=device, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train_fold(fold, index: int, run, *, data: str, structures: Sequence[str], methods: Sequence[str],
                sizes: Mapping[str, Any], device="cpu", seed: int = 0, progress: bool = False) -> pd.DataFrame:
    from npcrepro.datasets import open_dataset
    from npcrepro.models import count_parameters

    S = dict(sizes)
    ds = open_dataset(data)
    cases = load_cases(ds, list(fold.train) + list(fold.test), structures)
    train_ds = slice_dataset([cases[n] for n in fold.train], structures, S.get("image_size"), seed=seed)
    records, training, qual = [], [], {}
    fig_case = fold.test[0]
    for key in methods:
        sub = run.sub(key) if run is not None else None
        t0 = time.perf_counter()
        model, hist = _train_one(key, train_ds, S, len(structures), run=sub, device=device,
                                 seed=seed + 1000 * index, progress=progress)
        secs = time.perf_counter() - t0
        training.append({"fold": index, "method": method_label(key), "key": key, "train_seconds": secs,
                         "iterations": hist.iterations, "parameters": count_parameters(model),
                         "final_train_loss": hist.final_train_loss, "train_slices": len(train_ds)})
        for name in fold.test:
            case = cases[name]
            t1 = time.perf_counter()
            prob, idx, box = predict_slices_of(model, case, structures, S.get("image_size"),
                                               batch_size=int(S.get("infer_batch") or 32), device=device)
            pred_s = time.perf_counter() - t1
            for row in score_case(prob, case, structures, idx, box):
                records.append({"case": name, "method": method_label(key), "key": key, **row,
                                "predict_seconds": pred_s})
            if name == fig_case:
                qual[key] = (prob, idx, box)
    if run is not None and run.writer:
        pd.DataFrame(training).to_csv(run.path / "training.csv", index=False)
        _save_qualitative(run.path / "qualitative.npz", cases[fig_case], structures, qual,
                          S.get("image_size"))
    return pd.DataFrame(records)


def _save_qualitative(path: Path, case, structures, qual: dict, image_size) -> None:
    """The test slice of ``case`` with the most structures: CT, reference masks, each method's probs."""
    if not qual:
        return
    _, idx, box = next(iter(qual.values()))
    ref = np.stack([case.labels[s][idx] if s in case.labels else np.zeros((len(idx),) + case.shape[1:], bool)
                    for s in structures])  # (K, z', y, x)
    j = int(ref.any(axis=(2, 3)).sum(axis=0).argmax())
    img = case.images["CT"][idx[j]]
    ref_j = ref[:, j]
    if box is not None:
        full = ((0, 1),) + tuple(box)
        img = T.crop(img[None], full, fill=CT_WINDOW[0])[0]
        ref_j = T.crop(ref_j, ((0, ref_j.shape[0]),) + tuple(box))
    arrays = {"image": img.astype(np.float32), "reference": ref_j.astype(bool),
              "structures": np.array(list(structures)), "slice": np.array(int(idx[j])),
              "case": np.array(case.name)}
    for key, (prob, _, _) in qual.items():
        arrays[f"prob_{key}"] = prob[:, j].astype(np.float16)
    np.savez_compressed(path, **arrays)


# ----------------------------------------------------------------------------------- the experiment
class Results:
    """What :func:`run` returns: the per-(case, structure, method) table ``metrics`` (with ``fold``),
    per-method training facts ``training``, the run folder, structures, methods, sizes and data label."""

    def __init__(self, metrics: pd.DataFrame, training: pd.DataFrame, run, structures: list[str],
                 methods: list[str], sizes: dict, data_label: str, profile: str, seconds: float):
        self.metrics, self.training, self.run = metrics, training, run
        self.structures, self.methods, self.sizes = structures, methods, sizes
        self.data_label, self.profile, self.seconds = data_label, profile, seconds

    @property
    def scored(self) -> pd.DataFrame:
        """Rows whose structure is present in the patient's reference (the rows the means use)."""
        return self.metrics[~self.metrics["ref_empty"].astype(bool)]

    def qualitative(self, fold: int = 0) -> dict | None:
        p = Path(self.run.path) / f"fold_{fold}" / "qualitative.npz"
        if not p.exists():
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def __repr__(self) -> str:
        return (f"Results({len(self.methods)} methods, {self.metrics['fold'].nunique()} folds, "
                f"{self.metrics['case'].nunique()} test patients, run={self.run.path})")


def run(data: str, *, sizes: Mapping[str, Any], methods: Sequence[str] | None = None,
        structures: Sequence[str] | None = None, profile: str = "cpu", out_dir: str = "runs",
        device="cpu", seed: int = 0, progress: bool = False, data_label: str | None = None,
        name: str = "cv", n_cases: int | None = None, max_folds: int | None = None,
        k_folds: int | None = None, resume: str = "") -> Results:
    """Cross-validate ``methods`` on the dataset at ``data``: ``k_folds`` folds by patient (the first
    ``max_folds`` run), one after the other in this process. ``resume`` names an earlier run folder of
    the same experiment: its finished folds are reused, the others run again."""
    from npcrepro.datasets import open_dataset
    from npcrepro.engine import RunFolder, make_folds, run_folds

    t0 = time.perf_counter()
    S = dict(sizes)
    methods = list(methods or S["methods"])
    for m in methods:
        method_label(m)
    ds = open_dataset(data)
    structures = list(structures or structures_for(ds.structures))
    cases = list(ds.cases)[: int(n_cases or S.get("n_cases") or len(ds.cases))]
    k = int(k_folds or S["k_folds"])
    k = min(k, len(cases))
    if k < 2:
        raise DataError(f"luo2020: cross-validation needs at least 2 cases, {data} has {len(cases)}")
    params = {"paper": PAPER, "profile": profile, "data": str(data), "methods": methods, "seed": seed,
              "structures": structures, "device": str(device), "sizes": S}
    rf = (RunFolder.open(resume) if resume else
          RunFolder.create(out_dir, profile, PAPER, name, params=params, device=str(device)))
    folds = make_folds(cases, "kfold", k=k, seed=seed, max_folds=max_folds or S.get("max_folds"), run=rf)
    table = run_folds(train_fold, folds, run=rf, data=str(data), structures=structures, methods=methods,
                      sizes=S, device=device, seed=seed, progress=progress)
    training = pd.concat([pd.read_csv(p) for p in sorted(rf.path.glob("fold_*/training.csv"))],
                         ignore_index=True)
    res = Results(table, training, rf, structures, methods, S, data_label or str(data), profile,
                  time.perf_counter() - t0)
    means = res.scored.groupby("method")[list(METRIC_COLUMNS)].mean()
    rf.write_summary({"paper": PAPER, "profile": profile, "data": data_label or str(data), "methods": methods,
                      "n_cases": len(cases), "n_folds": len(folds), "seconds": res.seconds,
                      "mean": means.to_dict()})
    rf.mark_done()
    return res


# ----------------------------------------------------------------------------------- tables
def fold_means(results: Results, metric: str = "dice") -> pd.DataFrame:
    """Mean ``metric`` per (fold, method) over test patients x structures present (Fig. 4's points)."""
    return results.scored.groupby(["fold", "method"])[metric].mean().unstack("method")


def comparison(results: Results, reported: pd.DataFrame):
    """Table 1, reported vs reproduced (DSC, AUC, F1, JSC; Mask R-CNN 'not reproduced')."""
    from npcrepro.evaluation import compare_with_paper

    table = compare_with_paper(reported, results.scored, paper=PAPER, data_source=results.data_label,
                               profile=results.profile, table="Table 1", digits=3,
                               metric_map={"dsc": "dice", "auc": "auc", "f1": "f1", "jaccard": "jaccard"})
    table.notes.append("Reproduced: mean ± sd over (test patient, structure) pairs of the folds run, "
                       "structures absent from a patient's reference left out; DSC/F1/JSC of the "
                       "0.5-thresholded masks, AUC by the rank formula on the probabilities.")
    return table


def ablation_table(results: Results, metric: str = "dice") -> pd.DataFrame:
    """The 2 x 2 ablation (stages x MSP) of mean ``metric``; missing corners are NaN."""
    m = results.scored.groupby("key")[metric].mean()
    corners = {("one stage", "no MSP"): "unet", ("one stage", "MSP"): "one_stage_msp",
               ("two stages", "no MSP"): "two_stage_no_msp", ("two stages", "MSP"): "ours"}
    out = pd.DataFrame(index=["one stage", "two stages"], columns=["no MSP", "MSP"], dtype=float)
    for (r, c), key in corners.items():
        out.loc[r, c] = m.get(key, np.nan)
    out["MSP effect"] = out["MSP"] - out["no MSP"]
    out.loc["two-stage effect"] = out.loc["two stages"] - out.loc["one stage"]
    return out


#: The paper's two claims as pairs of methods (better, baseline) that differ in one component only.
CLAIMS: dict[str, list[tuple[str, str]]] = {
    "a second stage helps": [("ours", "one_stage_msp"), ("two_stage_no_msp", "unet")],
    "the MSP block helps": [("ours", "two_stage_no_msp"), ("one_stage_msp", "unet")],
}


def claims_table(results: Results, metric: str = "dice") -> pd.DataFrame:
    """Paired comparisons (same test patients and structures) that test the paper's two claims: mean
    difference, paired t-test and Wilcoxon p-values. Pairs whose methods were not both run are left out."""
    from npcrepro.evaluation import paired_test

    sc = results.scored
    rows = []
    for claim, pairs in CLAIMS.items():
        for a, b in pairs:
            if a not in results.methods or b not in results.methods:
                continue
            r = paired_test(sc[sc["key"] == a], sc[sc["key"] == b], metric)
            rows.append({"claim": claim, "comparison": f"{method_label(a)} vs {method_label(b)}",
                         "n pairs": r["n"], f"mean {metric} A": r["mean_a"], f"mean {metric} B": r["mean_b"],
                         "difference A - B": r["mean_diff"], "p (paired t)": r["p_t"],
                         "p (Wilcoxon)": r["p_wilcoxon"]})
    return pd.DataFrame(rows)


def per_structure_table(results: Results, metric: str = "dice") -> pd.DataFrame:
    """Mean ``metric`` per structure (rows, the paper's names where known) and method (columns), over
    test patients that have the structure; the last row is the mean over structures."""
    sc = results.scored
    t = sc.pivot_table(index="structure", columns="method", values=metric, aggfunc="mean")
    order = [method_label(k) for k in results.methods if method_label(k) in t.columns]
    t = t.reindex(index=[s for s in results.structures if s in t.index], columns=order)
    paper_name = {v: k for k, v in STRUCTURES.items()}
    t.index = [f"{paper_name[s]} ({s})" if s in paper_name else s for s in t.index]
    t.loc["mean over structures"] = t.mean(axis=0)
    t.index.name = "structure"
    return t


# ----------------------------------------------------------------------------------- figures
_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
            "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000"]


def _overlay(ax, image, masks, structures, title):
    ax.imshow(image, cmap="gray", vmin=CT_WINDOW[0] / 2, vmax=CT_WINDOW[1] / 2)
    for k, _ in enumerate(structures):
        if masks[k].any():
            ax.contour(masks[k], levels=[0.5], colors=[_COLOURS[k % len(_COLOURS)]], linewidths=1.0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def fig_case(case, structures: Sequence[str], n: int = 4):
    """``n`` labelled axial slices of one case (evenly over its labelled range) with every structure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    idx = labelled_slices(case, structures)
    zs = idx[np.linspace(0, len(idx) - 1, n).round().astype(int)] if len(idx) else []
    fig, axes = plt.subplots(1, max(1, len(zs)), figsize=(3.0 * max(1, len(zs)), 3.3), squeeze=False)
    ref = np.stack([case.labels[s] if s in case.labels else np.zeros(case.shape, bool) for s in structures])
    for ax, z in zip(axes[0], zs):
        _overlay(ax, case.images["CT"][z], ref[:, z], structures, f"{case.name}, z = {int(z)}")
    present = [k for k, s in enumerate(structures) if s in case.labels]
    handles = [Line2D([0], [0], color=_COLOURS[k % len(_COLOURS)], lw=2) for k in present]
    fig.legend(handles, [structures[k] for k in present], loc="lower center", ncol=min(7, len(present)),
               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def method_table(sizes: Mapping[str, Any], n_classes: int, methods: Sequence[str] | None = None,
                 reference_sizes: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per method: label, registered model, what it is, parameters at ``sizes`` (and at
    ``reference_sizes``, e.g. the gpu profile's paper-scale widths)."""
    from npcrepro.models import count_parameters

    what = {"unet": "5-level U-Net = stage 1 alone, no MSP", "fcn8": "VGG16-style encoder, FCN-8s decoder",
            "ours": "stage 1 (5 levels) + stage 2 (3 levels), MSP at both bottlenecks",
            "two_stage_no_msp": "both stages, no MSP (ablation)",
            "one_stage_msp": "stage 1 alone with MSP (ablation)"}
    rows = []
    for key in methods or list(METHODS):
        label, name, fixed = METHODS[key]
        row = {"method": label, "key": key, "model": name, "arguments": fixed or "", "what": what.get(key, ""),
               "parameters": count_parameters(build_method(key, sizes, n_classes))}
        if reference_sizes is not None:
            ref_model = build_method(key, reference_sizes, n_classes)
            row["parameters (gpu profile widths)"] = count_parameters(ref_model)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def fig_qualitative(results: Results, fold: int = 0):
    """Fig. 3: one test slice, reference and every method's 0.5-thresholded contours."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    q = results.qualitative(fold)
    if q is None:
        raise DataError(f"no qualitative.npz in fold {fold} of {results.run.path}")
    structures = [str(s) for s in q["structures"]]
    keys = [k for k in results.methods if f"prob_{k}" in q]
    n = len(keys) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0))
    _overlay(axes[0], q["image"], q["reference"], structures, f"reference\n{q['case']} z={int(q['slice'])}")
    for ax, key in zip(axes[1:], keys):
        _overlay(ax, q["image"], q[f"prob_{key}"].astype(np.float32) >= 0.5, structures, method_label(key))
    present = [k for k in range(len(structures)) if q["reference"][k].any()]
    handles = [Line2D([0], [0], color=_COLOURS[k % len(_COLOURS)], lw=2) for k in present]
    fig.legend(handles, [structures[k] for k in present], loc="lower center", ncol=min(7, len(present)),
               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def fig_dsc_per_fold(results: Results):
    """Fig. 4: mean DSC of every method in every fold."""
    import matplotlib.pyplot as plt

    fm = fold_means(results)
    fm = fm[[m for m in (method_label(k) for k in results.methods) if m in fm.columns]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method in fm.columns:
        ax.plot(fm.index + 1, fm[method], marker="o", label=method)
    ax.set_xlabel("fold")
    ax.set_ylabel("mean DSC (test patients x structures)")
    ax.set_xticks(list(fm.index + 1))
    ax.legend(fontsize=8)
    ax.set_title(f"DSC per fold ({results.data_label}, {results.profile} profile)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_boxplots(results: Results):
    """Fig. 5: per-patient mean DSC per method (boxes), fold means as dots."""
    import matplotlib.pyplot as plt

    per_case = results.scored.groupby(["method", "fold", "case"])["dice"].mean().reset_index()
    order = [method_label(k) for k in results.methods]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    data = [per_case.loc[per_case["method"] == m, "dice"].to_numpy() for m in order]
    ax.boxplot(data, showmeans=False)
    ax.set_xticks(range(1, len(order) + 1))
    ax.set_xticklabels(order, rotation=20, fontsize=8)
    fm = fold_means(results)
    for i, m in enumerate(order, start=1):
        if m in fm.columns:
            ax.scatter(np.full(len(fm), i) + 0.2, fm[m], s=14, color="k", zorder=3,
                       label="fold mean" if i == 1 else None)
    ax.set_ylabel("DSC per test patient")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
