"""chen2020's data pipeline, rows, training recipes, inference and figures (MMFNet, Tables I and II).

The road every row travels (Sec. IV-A/C of the paper)::

    Case (T1, T2, CET1 on the T1 grid, GTVp)
      -> prepare(): resample XY (optional), intra-body intensity normalisation [40] and clipping per
         sequence (T1 [-2, 1], T2 [-3, 2], CET1 [-2, 3.5]), Otsu 3D bounding box of T1 -> its centre
      -> training samples: depth x H x W windows (paper 16 x 256 x 256) centred in-plane on the box
         centre, sliding along z with step 4; on the fly: random centre offset up to (4, 32, 32),
         random vertical flip, random in-plane rotation within 5 degrees
      -> Trainer (Adam; Dice loss, eps 1; early stopping on a 25 % validation split; self-transfer:
         frozen pre-trained encoders at 1e-3 for 5 epochs, then everything at 1e-4)
      -> inference: the same windows along z (step 4), probabilities averaged where they overlap,
         zero outside the in-plane crop; mapped back to the case's original grid
      -> per patient: DSC (threshold 0.5), AP (area under the precision-recall curve), Dice loss
         (1 - soft Dice with eps 1 on the probabilities), seconds per patient.

Rows (:data:`ROWS`) are keyed as :data:`npcrepro.papers.chen2020.TABLE_I_ROWS` /
:data:`~npcrepro.papers.chen2020.TABLE_II_ROWS`, plus three rows the paper trains but does not
tabulate: ``single_t1``, ``single_t2``, ``single_cet1``, the modality-specific encoder-decoders that
self-transfer starts from (MMFNet's own encoder and decoder on one sequence; Sec. III-C). They are the
fairest "best single sequence" control for the fused models and cost nothing extra when a
self-transfer row runs.

Choices where the paper is silent are listed in :data:`CHOICES` (the chapter prints them).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from npcrepro import transforms as T
from npcrepro.transforms import otsu_threshold
from npcrepro.errors import DataError, ParameterError
from npcrepro.papers import chen2020 as paper

__all__ = [
    "PAPER", "MODALITIES", "STRUCTURE", "CLIP_RANGES", "SIZES", "CHOICES", "ROWS", "Row", "Prepared",
    "otsu_threshold", "body_mask", "intra_body_normalise", "prepare", "keep_size", "WindowDataset",
    "CentrePixelDataset", "select_rows", "build_row", "make_loss", "stages_for", "train_row",
    "CORE_ROWS", "training_order", "recipe_table", "model_table", "three_questions", "fig_case",
    "fig_curves", "summary_table", "predict", "patient_metrics", "train_fold", "run", "Results", "comparison", "fig_slices",
    "fig_tp_fp_fn", "TABLE_I", "TABLE_II",
]

PAPER = "chen2020"
MODALITIES = ("T1", "T2", "CET1")
STRUCTURE = "GTVp"
TABLE_I, TABLE_II = "Table I", "Table II"

#: Clipping after intra-body normalisation (Sec. IV-A), in units of the body's sd.
CLIP_RANGES: dict[str, tuple[float, float]] = {"T1": (-2.0, 1.0), "T2": (-3.0, 2.0), "CET1": (-2.0, 3.5)}

#: The three questions the cpu profile must still answer: best single sequence (the self-transfer
#: pre-trainings), plain multi-encoder fusion, the fusion block without and with self-transfer.
CORE_ROWS = "single_t1,single_t2,single_cet1,multi_encoder_mm,multi_mlp_std,mmfnet_full"

#: Profile sizes. ``gpu`` is the paper's scale (Sec. IV-A/C); ``cpu`` and ``smoke`` shrink the cohort,
#: the crop, the widths and the budget, never the code path. ``crop`` is (z, y, x) voxels on the
#: working grid (XY resampled to ``spacing_xy`` mm when set), ``offset`` the augmentation's maximal
#: centre shift, ``width`` the channel multiplier of every network, ``max_folds`` how many of the
#: ``k_folds`` folds run. ``rows="default"`` runs ``default_rows``.
SIZES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        n_cases=6, phantom_preset="smoke", spacing_xy=4.0, crop=[8, 32, 32], z_step=4,
        offset=[2, 4, 4], rotate_deg=5.0, flip=True, width=0.25, pool_sizes=None, batch_size=2,
        iterations_per_epoch=2, epochs=2, warmup_epochs=1, patience=2, lr=1e-3, lr_finetune=1e-4,
        k_folds=3, max_folds=1, val_fraction=0.25, patch_size=9, patch_batch_size=16,
        patch_samples_per_case=32, infer_batch=4, figure_cases=1, threads=1, rows="default",
        default_rows=CORE_ROWS,
    ),
    "cpu": dict(
        n_cases=16, phantom_preset="cpu", spacing_xy=2.6667, crop=[16, 48, 48], z_step=4,
        offset=[4, 6, 6], rotate_deg=5.0, flip=True, width=0.5, pool_sizes=None, batch_size=4,
        iterations_per_epoch=10, epochs=20, warmup_epochs=8, patience=5, lr=1e-3, lr_finetune=1e-3,
        k_folds=4, max_folds=1, val_fraction=0.25, patch_size=9, patch_batch_size=64,
        patch_samples_per_case=256, infer_batch=4, figure_cases=2, threads=1, rows="default",
        default_rows=CORE_ROWS,
    ),
    "gpu": dict(
        n_cases=149, phantom_preset="gpu", spacing_xy=0.5, crop=[16, 256, 256], z_step=4,
        offset=[4, 32, 32], rotate_deg=5.0, flip=True, width=1.0, pool_sizes=None, batch_size=8,
        iterations_per_epoch=75, epochs=100, warmup_epochs=5, patience=10, lr=1e-3, lr_finetune=1e-4,
        k_folds=5, max_folds=5, val_fraction=0.25, patch_size=33, patch_batch_size=64,
        patch_samples_per_case=2048, infer_batch=4, figure_cases=2, threads=None, rows="default",
        default_rows="all",
    ),
}


def _register_profiles() -> None:
    from npcrepro.profiles import register_profile

    for name, sizes in SIZES.items():
        register_profile(PAPER, name, **sizes)


_register_profiles()

#: Where the paper is silent: what this chapter chose.
CHOICES: dict[str, str] = {
    "intra-body normalisation": "z-score with the mean and sd of the body voxels (Otsu foreground of "
                                "each sequence, largest component, holes filled), as ref. [40] describes",
    "Otsu bounding box": "on T1 (the grid CET1 and T2 are registered to); the crop is centred in-plane "
                         "on the box centre and slides along z over the whole volume",
    "padding": "windows reaching outside the volume are filled with each sequence's lower clip value "
               "(the normalised background level)",
    "vertical flip": "up-down flip of the axial image (the literal meaning; torchvision's convention)",
    "learning rate without self-transfer": "1e-3 (the rate of the single-modality networks)",
    "Dice loss per sample": "one soft Dice per window, averaged over the batch",
    "early stopping": "applies to every row, on the validation windows' mean loss; the weights of the "
                      "best validation epoch are kept",
    "frozen encoders": "weights and batch-norm statistics stay as pre-trained during warm-up",
    "initialisation": "PyTorch's default (the paper's framework, PyTorch 0.4.1, initialised convolutions "
                      "the same way) except the output layer of every row, which starts small with a 1 % "
                      "foreground prior so that the Dice loss leaves its initial plateau sooner",
    "warm-up length (cpu profile)": "8 of 20 epochs (80 updates): the decoder must leave the Dice "
                                    "plateau before the encoders are released; the paper's 5 epochs "
                                    "are 375 updates",
    "fine-tuning rate (cpu profile)": "1e-3 instead of the paper's 1e-4: in 120 updates the 1e-4 phase "
                                      "barely moves (phantom, validation Dice loss 0.77 vs 0.43 at "
                                      "1e-3), so at this budget 1e-4 would measure the budget, not "
                                      "self-transfer; at 1e-3 the rows with and without self-transfer "
                                      "train at the same rate and differ only in their start (gpu: 1e-4)",
    "patch-based CNN": "unpadded 5x5 convolutions whose receptive field is the patch (33 px = 16.5 mm at "
                       "0.5 mm; 9 px at the smaller profiles), "
                       "trained on class-balanced centre pixels with binary cross-entropy; one branch "
                       "per sequence for the multi-modality version",
    "2D U-Net": "npcrepro unet2d with widths (32, 64, 128, 256, 512) x width, on every axial slice of "
                "the crop, same augmentation and Dice loss",
    "3D U-Net": "npcrepro unet3d with widths (8, 16, 32, 64, 128) x width (one MMFNet encoder's scale)",
    "Dice loss per patient": "1 - (2 sum pg + 1) / (sum p + sum g + 1) over the patient's whole volume",
    "AP": "step-wise area under the precision-recall curve over all distinct probabilities "
          "(sklearn's average_precision_score)",
}


# ---------------------------------------------------------------------------------------------
# preprocessing


def body_mask(image: np.ndarray) -> np.ndarray:
    """The body: Otsu foreground, its largest 3D connected component, holes filled slice by slice."""
    img = np.asarray(image, np.float32)
    mask = img > otsu_threshold(img)
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


def intra_body_normalise(image: np.ndarray, mask: np.ndarray | None = None,
                         clip: tuple[float, float] | None = None) -> np.ndarray:
    """(image - mean_body) / sd_body, then clipped to ``clip``; the body is :func:`body_mask` unless
    given."""
    img = np.asarray(image, np.float32)
    mask = body_mask(img) if mask is None else np.asarray(mask, bool)
    out = T.zscore(img, mask if mask.any() else None)
    return T.clip(out, *clip) if clip is not None else out


@dataclass
class Prepared:
    """One patient ready for the networks.

    ``image`` (C, z, y, x) float32 on the working grid (``channels`` order), ``target`` (z, y, x) bool
    on the same grid, ``center`` the Otsu box centre (working-grid voxels), ``record`` maps working-grid
    arrays back to the original grid, ``reference`` is the original-grid mask and ``spacing`` the
    original spacing (both for scoring).
    """

    name: str
    image: np.ndarray
    channels: tuple[str, ...]
    target: np.ndarray
    center: tuple[float, float, float]
    record: T.Preprocessed
    reference: np.ndarray
    spacing: tuple[float, float, float]
    fills: tuple[float, ...]

    def channel_index(self, names: Sequence[str]) -> list[int]:
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise DataError(f"case {self.name}: missing sequence(s) {missing} (has {list(self.channels)})")
        return [self.channels.index(n) for n in names]


def prepare(case, *, channels: Sequence[str] = MODALITIES, structure: str = STRUCTURE,
            spacing_xy: float | None = None, bbox_channel: str = "T1",
            keep: Sequence[int] | None = None) -> Prepared:
    """Resample (XY only; z kept, as the paper), normalise and clip every sequence, find the Otsu box.

    ``keep`` (y, x): afterwards keep only this in-plane region around the Otsu box centre (all
    slices), enough for the network's crop plus its augmentation; a 0.5 mm grid of a whole head
    would otherwise hold ~1 GB per patient. The record maps predictions back either way.

    Raises DataError naming the case when a sequence or the structure is missing.
    """
    channels = tuple(channels)
    missing = [c for c in channels if c not in case.images]
    if missing:
        raise DataError(f"case {case.name}: missing sequence(s) {missing} (has {sorted(case.images)}); "
                        f"chen2020 needs {', '.join(channels)}")
    if structure not in case.labels:
        raise DataError(f"case {case.name}: no {structure!r} mask (has {sorted(case.labels)})")
    reference = np.asarray(case.labels[structure], bool)
    spacing = None
    if spacing_xy is not None:
        spacing = (case.spacing[0], float(spacing_xy), float(spacing_xy))
    sub = type(case)(case.name, {c: case.images[c] for c in channels}, {structure: reference},
                     case.spacing, case.origin, case.direction, dict(case.meta))
    work, record = T.preprocess(sub, spacing=spacing)
    ref_ch = bbox_channel if bbox_channel in channels else channels[0]
    masks = {c: body_mask(work.images[c]) for c in channels}
    box = T.bbox(masks[ref_ch])
    if box is None:
        raise DataError(f"case {case.name}: Otsu found no body in {ref_ch}")
    center = tuple((a + b - 1) / 2.0 for a, b in box)
    image = np.stack([intra_body_normalise(work.images[c], masks[c], CLIP_RANGES.get(c)) for c in channels])
    fills = tuple(float(CLIP_RANGES[c][0]) if c in CLIP_RANGES else float(image[i].min())
                  for i, c in enumerate(channels))
    target = np.asarray(work.labels[structure], bool)
    if keep is not None:
        nz = image.shape[1]
        (y0, y1), (x0, x1) = T.center_box(image.shape[2:], keep, center[1:])
        kbox = ((0, nz), (y0, y1), (x0, x1))
        image = _crop_image(image, kbox, fills)
        target = T.crop(target, kbox, fill=False)
        center = (center[0], center[1] - y0, center[2] - x0)
        record = T.Preprocessed(record.original, record.resampled, kbox, dict(record.notes))
    return Prepared(case.name, image.astype(np.float32), channels, target, center, record, reference,
                    tuple(case.spacing), fills)


def keep_size(S: Mapping[str, Any]) -> tuple[int, int]:
    """In-plane region :func:`prepare` keeps for sizes ``S``: the crop, twice the maximal offset and a
    quarter of the crop for the rotation's corners."""
    _, h, w = (int(v) for v in S["crop"])
    _, oy, ox = (int(v) for v in S["offset"])
    return (h + 2 * oy + h // 4, w + 2 * ox + w // 4)


def _crop_image(image: np.ndarray, box, fills: Sequence[float]) -> np.ndarray:
    return np.stack([T.crop(image[c], box, fill=fills[c]) for c in range(image.shape[0])])


def inplane_box(prep: Prepared, size: Sequence[int], shift: Sequence[int] = (0, 0)):
    """(y, x) box of ``size`` centred on the Otsu box centre (+ ``shift`` voxels)."""
    return T.center_box(prep.image.shape[2:], size, (prep.center[1] + shift[0], prep.center[2] + shift[1]))


def _z_starts(nz: int, depth: int, step: int) -> list[int]:
    from npcrepro.engine.inference import window_starts

    if nz < depth:
        return [-((depth - nz) // 2)]
    return window_starts(nz, depth, step)


# ---------------------------------------------------------------------------------------------
# training samples


class WindowDataset(torch.utils.data.Dataset):
    """The paper's training windows: ``depth`` slices x ``size`` (H, W), in-plane centred on the Otsu
    box centre, starting every ``step`` slices along z (every slice with ``depth=1``).

    ``get(index, rng)`` applies the augmentation (random centre offset within +-``offset`` voxels per
    axis, vertical flip with probability 1/2 when ``flip``, in-plane rotation within +-``rotate_deg``);
    ``dataset[index]`` is the plain window. Items are ``(image, target)`` float32 tensors
    (C, depth, H, W) and (1, depth, H, W), or (C, H, W) and (1, H, W) with ``two_d``.
    """

    def __init__(self, prepared: Sequence[Prepared], channels: Sequence[str], depth: int,
                 size: Sequence[int], step: int, *, offset: Sequence[int] = (0, 0, 0), flip: bool = False,
                 rotate_deg: float = 0.0, two_d: bool = False):
        if not prepared:
            raise DataError("WindowDataset: no cases")
        self.prepared = list(prepared)
        self.channels = tuple(channels)
        self.index = [p.channel_index(self.channels) for p in self.prepared]
        self.depth, self.size, self.step = int(depth), tuple(int(s) for s in size), int(step)
        self.offset = tuple(int(o) for o in offset)
        self.flip, self.rotate_deg, self.two_d = bool(flip), float(rotate_deg), bool(two_d)
        if self.two_d and self.depth != 1:
            raise ParameterError("two_d windows need depth=1")
        self.items = [(ci, z) for ci, p in enumerate(self.prepared)
                      for z in _z_starts(p.image.shape[1], self.depth, self.step)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.get(int(index), None)

    def get(self, index: int, rng: np.random.Generator | None):
        ci, z0 = self.items[index]
        p = self.prepared[ci]
        dz = dy = dx = 0
        if rng is not None:
            dz, dy, dx = (int(rng.integers(-o, o + 1)) if o else 0 for o in self.offset)
        nz = p.image.shape[1]
        if nz >= self.depth:
            z0 = min(max(z0 + dz, 0), nz - self.depth)
        (y0, y1), (x0, x1) = inplane_box(p, self.size, (dy, dx))
        box = ((z0, z0 + self.depth), (y0, y1), (x0, x1))
        idx = self.index[ci]
        image = _crop_image(p.image[idx], box, [p.fills[i] for i in idx])
        target = T.crop(p.target, box)[None].astype(np.float32)
        if rng is not None:
            if self.flip and rng.random() < 0.5:
                image, target = image[..., ::-1, :], target[..., ::-1, :]
            if self.rotate_deg:
                angle = float(rng.uniform(-self.rotate_deg, self.rotate_deg))
                image, target = T.rotate(np.ascontiguousarray(image), np.ascontiguousarray(target) > 0.5,
                                         angle)
                target = target.astype(np.float32)
        if self.two_d:
            image, target = image[:, 0], target[:, 0]
        return (torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                torch.from_numpy(np.ascontiguousarray(target, np.float32)))


class CentrePixelDataset(torch.utils.data.Dataset):
    """Training patches of the patch-based CNNs: (C, P, P) around a centre pixel, target (1, 1, 1) its
    label. A fraction ``fg_fraction`` of the draws is centred on a tumour pixel (class balance), the
    rest anywhere in the in-plane crop (``size``) of any slice. ``samples_per_case`` draws per case
    make one pass; ``dataset[i]`` is a fixed draw (validation)."""

    def __init__(self, prepared: Sequence[Prepared], channels: Sequence[str], patch_size: int,
                 size: Sequence[int], *, samples_per_case: int = 256, fg_fraction: float = 0.5,
                 flip: bool = False):
        if not prepared:
            raise DataError("CentrePixelDataset: no cases")
        self.prepared, self.channels = list(prepared), tuple(channels)
        self.index = [p.channel_index(self.channels) for p in self.prepared]
        self.patch, self.size = int(patch_size), tuple(int(s) for s in size)
        self.samples_per_case, self.fg_fraction, self.flip = int(samples_per_case), float(fg_fraction), flip
        self.fg = [np.argwhere(p.target) for p in self.prepared]

    def __len__(self) -> int:
        return len(self.prepared) * self.samples_per_case

    def __getitem__(self, index: int):
        return self.get(int(index), None)

    def get(self, index: int, rng: np.random.Generator | None):
        from npcrepro.engine.data import item_rng

        ci = index // self.samples_per_case
        p = self.prepared[ci]
        draw = rng if rng is not None else item_rng(0, 7727, index)
        if len(self.fg[ci]) and draw.random() < self.fg_fraction:
            z, y, x = (int(v) for v in self.fg[ci][draw.integers(len(self.fg[ci]))])
        else:
            (y0, y1), (x0, x1) = inplane_box(p, self.size)
            z = int(draw.integers(p.image.shape[1]))
            y, x = int(draw.integers(y0, y1)), int(draw.integers(x0, x1))
        r = self.patch // 2
        box = ((z, z + 1), (y - r, y + r + 1), (x - r, x + r + 1))
        idx = self.index[ci]
        image = _crop_image(p.image[idx], box, [p.fills[i] for i in idx])[:, 0]
        inside = 0 <= y < p.target.shape[1] and 0 <= x < p.target.shape[2]
        label = float(p.target[z, y, x]) if inside else 0.0
        if rng is not None and self.flip and rng.random() < 0.5:
            image = image[:, ::-1, :]
        return (torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                torch.full((1, 1, 1), label, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class Row:
    """One runnable row: the paper's configuration (``config``, from :mod:`npcrepro.papers.chen2020`)
    and how this chapter runs it (``kind``: "3d" windows, "2d" slices or "patch" classifier)."""

    key: str
    label: str
    tables: tuple[str, ...]
    family: str
    kind: str
    modalities: tuple[str, ...]
    self_transfer: bool = False
    config: dict = field(default_factory=dict, compare=False, hash=False)


#: Keys that name the same model as another row (the Table II baseline is Table I's multi-encoder
#: network with the same numbers): trained once, under the key on the right.
SAME_AS = {"baseline": "multi_encoder_mm"}


def _rows() -> dict[str, Row]:
    kinds = {"patch_cnn": "patch", "mm_patch_cnn": "patch", "unet": "2d"}
    rows: dict[str, Row] = {}
    for table, entries in ((TABLE_I, paper.TABLE_I_ROWS), (TABLE_II, paper.TABLE_II_ROWS)):
        for e in entries:
            key = SAME_AS.get(e["key"], e["key"])
            if key in rows:
                rows[key] = replace(rows[key], tables=rows[key].tables + (table,))
                continue
            rows[key] = Row(key, e["label"], (table,), e["family"], kinds.get(e["family"], "3d"),
                            tuple(e["modalities"]), bool(e["self_transfer"]), dict(e))
    for m in MODALITIES:
        key = f"single_{m.lower()}"
        rows[key] = Row(key, f"Modality-specific encoder-decoder ({m})", (), "single", "3d", (m,), False,
                        {"key": key, "family": "single", "modalities": (m,)})
    return rows


#: Every runnable row by key (Table I, Table II, then the three self-transfer pre-trainings); 26
#: distinct models (``baseline`` is an alias, see :data:`SAME_AS`).
ROWS: dict[str, Row] = _rows()


def select_rows(selection: str | Sequence[str], default: str | Sequence[str] | None = None) -> list[str]:
    """Row keys from ``"all"``, ``"table1"``, ``"table2"``, ``"default"`` (``default``), a
    comma-separated string or a list; aliases (``baseline``) map to the row that is trained."""
    if isinstance(selection, str):
        s = selection.strip().lower()
        if s == "default":
            if default is None:
                raise ParameterError("rows='default' but the profile names no rows")
            return select_rows(default)
        if s == "all":
            keys = list(ROWS)
        elif s in ("table1", "table i"):
            keys = [r["key"] for r in paper.TABLE_I_ROWS]
        elif s in ("table2", "table ii"):
            keys = [r["key"] for r in paper.TABLE_II_ROWS]
        else:
            keys = [k.strip() for k in selection.split(",") if k.strip()]
    else:
        keys = [str(k) for k in selection]
    out = []
    for k in keys:
        k = SAME_AS.get(k, k)
        if k not in ROWS:
            raise ParameterError(f"unknown chen2020 row {k!r} (valid: {', '.join(ROWS)}, or all, table1, "
                                 f"table2, default)")
        if k not in out:
            out.append(k)
    return out


UNET2D_WIDTHS = (32, 64, 128, 256, 512)
UNET3D_WIDTHS = (8, 16, 32, 64, 128)


def build_row(key: str, *, width: float = 1.0, pool_sizes=None, patch_size: int = 33) -> nn.Module:
    """The network of row ``key`` (logits out). Input channels are the row's modalities in order."""
    from npcrepro import models
    from npcrepro.models import mmfnet as M  # noqa: F401 - registers the chen2020 models

    row = ROWS.get(SAME_AS.get(key, key))
    if row is None:
        raise ParameterError(f"unknown chen2020 row {key!r} (valid: {', '.join(ROWS)})")
    c = row.config
    n = len(row.modalities)
    if row.family in ("patch_cnn", "mm_patch_cnn"):
        return models.build("chen2020_patch_cnn", in_channels=n, patch_size=patch_size, width=width,
                            branches="per_channel" if n > 1 else "shared")
    if row.family in ("unet", "unet3d"):
        name, widths = ("unet2d", UNET2D_WIDTHS) if row.family == "unet" else ("unet3d", UNET3D_WIDTHS)
        net = models.build(name, in_channels=n, widths=M.scaled(widths, width), init=None)
        M.init_output(net.head)  # the same output initialisation as every other row
        return net
    if row.family == "single_encoder":
        return models.build("chen2020_single_encoder", in_channels=n, width=width, pool_sizes=pool_sizes)
    if row.family in ("multi_encoder", "single"):
        return models.build("chen2020_mmfnet", modalities=row.modalities, fusion="concat", width=width,
                            pool_sizes=pool_sizes)
    if row.family == "mmfnet":
        return models.build(
            "chen2020_mmfnet", modalities=row.modalities, fusion="block", shared_mlp=bool(c["shared_mlp"]),
            channel_pools=("avg", "max") + (("std",) if c["std_channel"] else ()),
            spatial_pools=("avg", "max") + (("std",) if c["std_spatial"] else ()),
            width=width, pool_sizes=pool_sizes)
    raise ParameterError(f"row {key!r}: unknown family {row.family!r}")


def make_loss(row: Row) -> nn.Module:
    """Dice loss (eps 1, Eq. 1) for the segmentation networks; binary cross-entropy for the patch
    classifiers (their output is one pixel's logit)."""
    from npcrepro.losses import DiceLoss

    if row.kind == "patch":
        return nn.BCEWithLogitsLoss()
    return DiceLoss(eps=1.0, activation="sigmoid")


def stages_for(row: Row, model: nn.Module, S: Mapping[str, Any]):
    """The paper's training stages: one Adam stage with early stopping, or, with self-transfer, a
    warm-up with frozen encoders (``warmup_epochs`` at ``lr``) then everything at ``lr_finetune``."""
    from npcrepro.engine import Stage
    from npcrepro.models.mmfnet import encoder_prefixes

    epochs, patience = int(S["epochs"]), S.get("patience")
    if row.self_transfer:
        warm = min(int(S["warmup_epochs"]), epochs)
        return [Stage("warmup", epochs=warm, optimizer="adam", lr=float(S["lr"]),
                      frozen=encoder_prefixes(model), forward_kwargs={"freeze_encoders": True}),
                Stage("finetune", epochs=max(epochs - warm, 1), optimizer="adam",
                      lr=float(S["lr_finetune"]), early_stopping=patience)]
    return [Stage("train", epochs=epochs, optimizer="adam", lr=float(S["lr"]), early_stopping=patience)]


def _datasets(row: Row, train: Sequence[Prepared], val: Sequence[Prepared], S: Mapping[str, Any]):
    depth, h, w = (int(v) for v in S["crop"])
    if row.kind == "patch":
        kw = dict(patch_size=int(S["patch_size"]), size=(h, w))
        per = int(S.get("patch_samples_per_case", 256))
        return (CentrePixelDataset(train, row.modalities, samples_per_case=per, flip=bool(S["flip"]), **kw),
                CentrePixelDataset(val, row.modalities, samples_per_case=max(16, per // 4), **kw) if val else None)
    two_d = row.kind == "2d"
    kw = dict(depth=1 if two_d else depth, size=(h, w), step=1 if two_d else int(S["z_step"]), two_d=two_d)
    off = tuple(S["offset"])
    off = (0,) + off[1:] if two_d else off
    tr = WindowDataset(train, row.modalities, offset=off, flip=bool(S["flip"]),
                       rotate_deg=float(S["rotate_deg"]), **kw)
    va = WindowDataset(val, row.modalities, **kw) if val else None
    return tr, va


def train_row(key: str, train: Sequence[Prepared], val: Sequence[Prepared], S: Mapping[str, Any], *,
              run=None, device="auto", seed: int = 0, progress: bool = False,
              pretrained: Mapping[str, nn.Module] | None = None):
    """Build and train row ``key``; returns ``(model, history)``. Self-transfer rows need
    ``pretrained`` = {modality: trained single-modality network}."""
    from npcrepro.engine import Trainer
    from npcrepro.engine.device import seed_everything
    from npcrepro.models.mmfnet import transfer_encoders

    row = ROWS[SAME_AS.get(key, key)]
    seed_everything(seed)
    model = build_row(row.key, width=float(S["width"]), pool_sizes=S.get("pool_sizes"),
                      patch_size=int(S["patch_size"]))
    if row.self_transfer:
        missing = [m for m in row.modalities if not pretrained or m not in pretrained]
        if missing:
            raise ParameterError(f"row {key!r} uses self-transfer but no pre-trained {missing} network")
        transfer_encoders(model, {m: pretrained[m] for m in row.modalities})
    tr, va = _datasets(row, train, val, S)
    batch = int(S["patch_batch_size"] if row.kind == "patch" else S["batch_size"])
    trainer = Trainer(model, make_loss(row), tr, val_data=va, stages=stages_for(row, model, S),
                      batch_size=batch, iterations_per_epoch=int(S["iterations_per_epoch"]), seed=seed,
                      device=device, run=run, progress=progress, desc=row.key, amp=True)
    history = trainer.fit()
    return model, history


# ---------------------------------------------------------------------------------------------
# inference and scoring


@torch.no_grad()
def predict(model: nn.Module, row: Row | str, prep: Prepared, S: Mapping[str, Any], *, device=None
            ) -> np.ndarray:
    """Tumour probabilities (z, y, x) float32 on the working grid: windows along z (step ``z_step``),
    overlaps averaged (3D rows), every slice (2D rows), every pixel's patch (patch CNNs); zero outside
    the in-plane crop."""
    from npcrepro.engine.device import resolve_device

    row = ROWS[SAME_AS.get(row, row)] if isinstance(row, str) else row
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model.eval()
    depth, h, w = (int(v) for v in S["crop"])
    nz = prep.image.shape[1]
    idx = prep.channel_index(row.modalities)
    fills = [prep.fills[i] for i in idx]
    image = prep.image[idx]
    (y0, y1), (x0, x1) = inplane_box(prep, (h, w))
    acc = np.zeros((nz, h, w), np.float32)
    cnt = np.zeros((nz, 1, 1), np.float32)
    bs = int(S.get("infer_batch", 4))
    if row.kind == "3d":
        starts = _z_starts(nz, depth, int(S["z_step"]))
        for b in range(0, len(starts), bs):
            chunk = starts[b:b + bs]
            x = np.stack([_crop_image(image, ((z, z + depth), (y0, y1), (x0, x1)), fills) for z in chunk])
            p = torch.sigmoid(model(torch.from_numpy(x).to(dev)).float())[:, 0].cpu().numpy()
            for z, pz in zip(chunk, p):
                a, b_ = max(z, 0), min(z + depth, nz)
                acc[a:b_] += pz[a - z:b_ - z]
                cnt[a:b_] += 1
    else:
        r = int(S["patch_size"]) // 2 if row.kind == "patch" else 0
        box = ((0, nz), (y0 - r, y1 + r), (x0 - r, x1 + r))
        vol = _crop_image(image, box, fills)  # (C, z, h + 2r, w + 2r)
        for b in range(0, nz, bs * 4):
            x = torch.from_numpy(np.ascontiguousarray(vol[:, b:b + bs * 4].transpose(1, 0, 2, 3))).to(dev)
            acc[b:b + bs * 4] = torch.sigmoid(model(x).float())[:, 0].cpu().numpy()
        cnt[:] = 1
    prob = acc / np.maximum(cnt, 1)
    full = np.zeros(prep.image.shape[1:], np.float32)
    return T.uncrop(prob, ((0, nz), (y0, y1), (x0, x1)), full.shape).astype(np.float32)


def patient_metrics(prob: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                    threshold: float = 0.5) -> dict[str, Any]:
    """The paper's three numbers for one patient (original grid): ``dice`` (DSC of ``prob >=
    threshold``), ``ap`` and ``dice_loss`` (1 - soft Dice with eps 1), plus volumes and empty flags."""
    from npcrepro import metrics

    ref = np.asarray(reference, bool)
    prob = np.clip(np.asarray(prob, np.float64), 0.0, 1.0)
    pred = prob >= threshold
    g = ref.astype(np.float64)
    loss = 1.0 - (2.0 * float((prob * g).sum()) + 1.0) / (float(prob.sum()) + float(g.sum()) + 1.0)
    vox = float(np.prod(spacing)) / 1000.0
    return {"dice": metrics.dice(pred, ref), "ap": metrics.average_precision(prob, ref), "dice_loss": loss,
            "volume_pred_cm3": float(pred.sum()) * vox, "volume_ref_cm3": float(ref.sum()) * vox,
            "pred_empty": bool(not pred.any()), "ref_empty": bool(not ref.any())}


# ---------------------------------------------------------------------------------------------
# one fold, and the whole run


def _load_prepared(data: str, names: Sequence[str], S: Mapping[str, Any]) -> dict[str, Prepared]:
    from npcrepro.datasets import open_dataset

    ds = open_dataset(data)
    missing = [c for c in MODALITIES if c not in ds.channels]
    if missing or STRUCTURE not in ds.structures:
        raise DataError(f"{data}: chen2020 needs channels {list(MODALITIES)} and structure {STRUCTURE!r}; "
                        f"the dataset has channels {ds.channels} and structures {ds.structures} "
                        f"(convert Li-2024 data with `npcrepro convert li2024 SRC DST`)")
    out = {}
    for n in names:
        case = ds.load(n, channels=list(MODALITIES), structures=[STRUCTURE])
        out[n] = prepare(case, spacing_xy=S.get("spacing_xy"), keep=keep_size(S))
    return out


def _needs_pretraining(keys: Sequence[str]) -> list[str]:
    mods: list[str] = []
    for k in keys:
        r = ROWS[k]
        if r.self_transfer:
            mods += [m for m in r.modalities if m not in mods]
    return [m for m in MODALITIES if m in mods]


def training_order(keys: Sequence[str]) -> list[str]:
    """Pre-trainings first (their models feed self-transfer), then the rest in the given order."""
    singles = [f"single_{m.lower()}" for m in _needs_pretraining(keys)]
    return singles + [k for k in keys if k not in singles]


def train_fold(fold, index: int, run, *, data: str, rows: Sequence[str], sizes: Mapping[str, Any],
               device="auto", seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One cross-validation fold (module level so that :func:`npcrepro.engine.run_folds` can run it
    in a worker): train every row in ``rows`` (and the single-modality pre-trainings self-transfer
    needs) on ``fold.train`` with ``fold.val`` for early stopping, predict ``fold.test``; returns the
    per-patient table. Writes each row's curves/checkpoints to ``<run>/<row>/``, ``training.csv`` (one
    line per row: seconds, iterations, best validation loss, early stop) and, for the first
    ``figure_cases`` test cases, the predicted masks ``predictions/<case>/<row>.nii.gz``.

    ``seconds`` per patient is the network's inference plus the mapping back to the original grid
    (the preprocessing, done once per patient for all rows, is not included)."""
    S = dict(sizes)
    prepared = _load_prepared(data, list(fold.train) + list(fold.val) + list(fold.test), S)
    train = [prepared[n] for n in fold.train]
    val = [prepared[n] for n in fold.val]
    test = [prepared[n] for n in fold.test]
    pretrained: dict[str, nn.Module] = {}
    records, training = [], []
    figure_cases = list(fold.test)[: int(S.get("figure_cases", 2))]
    for k in training_order(rows):
        row = ROWS[k]
        sub = run.sub(k) if run is not None else None
        t0 = time.perf_counter()
        model, hist = train_row(k, train, val, S, run=sub, device=device, seed=seed + 1000 * index,
                                progress=progress, pretrained=pretrained)
        train_s = time.perf_counter() - t0
        if row.family == "single":
            pretrained[row.modalities[0]] = model
        training.append({"row": k, "method": row.label, "train_seconds": train_s,
                         "iterations": hist.iterations, "best_val_loss": hist.best_val_loss,
                         "stopped_early": ",".join(hist.stopped_early)})
        for prep in test:
            t1 = time.perf_counter()
            prob = predict(model, row, prep, S)
            prob = T.invert(prob, prep.record, order="linear")
            secs = time.perf_counter() - t1
            rec = {"case": prep.name, "row": k, "method": row.label, "seconds": secs}
            rec.update(patient_metrics(prob, prep.reference, prep.spacing))
            records.append(rec)
            if run is not None and prep.name in figure_cases:
                run.write_prediction(prep.name, k, prob >= 0.5, prep.record.original)
    if run is not None and run.writer:
        pd.DataFrame(training).assign(fold=index).to_csv(run.path / "training.csv", index=False)
    return pd.DataFrame(records)


@dataclass
class Results:
    """What :func:`run` returns: the per-patient table (``metrics``: fold, case, row, method, dice, ap,
    dice_loss, seconds, ...), per-row training facts (``training``), the run folder, the rows, sizes
    and the data source."""

    metrics: pd.DataFrame
    training: pd.DataFrame
    run: Any
    rows: list[str]
    sizes: dict
    data: str
    data_label: str
    profile: str

    def prediction(self, case: str, row: str) -> np.ndarray | None:
        """A saved predicted mask (original grid) of a figure case, or None."""
        for fold in sorted(self.run.path.glob("fold_*")):
            p = fold / "predictions" / case / f"{row}.nii.gz"
            if p.exists():
                from npcrepro import io

                return io.read(p).array.astype(bool)
        return None

    def figure_cases(self) -> list[str]:
        return sorted({p.parent.name for p in self.run.path.glob("fold_*/predictions/*/*.nii.gz")})


def run(data: str, *, rows: Sequence[str], sizes: Mapping[str, Any], profile: str = "cpu",
        out_dir: str = "runs", device="auto", seed: int = 0, progress: bool = True,
        data_label: str | None = None, parallel: bool | int = False, resume: str = "") -> Results:
    """The chapter's experiment: k-fold cross-validation (``k_folds``, first ``max_folds`` run; 25 %
    of each training part for validation) of every row in ``rows`` on the dataset at ``data``.
    ``sizes["threads"]`` (when set and training on the CPU) fixes the number of torch threads.

    ``resume``: an earlier run folder of the same experiment; its folds (``splits.json``) are kept and
    folds already marked done are not trained again."""
    from npcrepro.datasets import open_dataset
    from npcrepro.engine import RunFolder, make_folds, run_folds

    S = dict(sizes)
    with _threads(S.get("threads"), device):
        return _run(data, rows, S, profile, out_dir, device, seed, progress, data_label, parallel, resume)


@contextlib.contextmanager
def _threads(n: int | None, device):
    """Use ``n`` torch threads while training on the CPU (restored afterwards)."""
    from npcrepro.engine.device import resolve_device

    if not n or resolve_device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(data, rows, S, profile, out_dir, device, seed, progress, data_label, parallel, resume) -> Results:
    from npcrepro.datasets import open_dataset
    from npcrepro.engine import RunFolder, make_folds, run_folds

    ds = open_dataset(data)
    cases = list(ds.cases)
    if S.get("n_cases"):
        cases = cases[: int(S["n_cases"])]
    params = {"paper": PAPER, "profile": profile, "data": str(data), "rows": list(rows), "seed": seed,
              "device": str(device), "sizes": S}
    rf = (RunFolder.open(resume) if resume else
          RunFolder.create(out_dir, profile, PAPER, "cv", params=params, device=str(device)))
    folds = make_folds(cases, "kfold", k=int(S["k_folds"]), seed=seed, val_fraction=float(S["val_fraction"]),
                       max_folds=S.get("max_folds"), run=rf)
    table = run_folds(train_fold, folds, run=rf, parallel=parallel, resume=True, data=str(data), rows=list(rows),
                      sizes=S, device=device, seed=seed, progress=progress)
    training = pd.concat([pd.read_csv(p) for p in sorted(rf.path.glob("fold_*/training.csv"))],
                         ignore_index=True)
    rf.write_summary({"rows": list(rows), "n_cases": len(cases), "n_folds": len(folds),
                      "mean": table.groupby("row")[["dice", "ap", "dice_loss", "seconds"]].mean().to_dict()})
    rf.mark_done()
    return Results(table, training, rf, list(rows), S, str(data), data_label or str(data), profile)


# ---------------------------------------------------------------------------------------------
# tables and figures


def comparison(results: Results, table: str = TABLE_I):
    """Reported vs reproduced for one of the paper's tables, one line per method (the table's order),
    columns (metric, reported / reproduced); rows this run did not train say "not reproduced".
    Returns a :class:`~npcrepro.evaluation.ComparisonTable` (its caption names data and profile)."""
    from npcrepro.evaluation import ComparisonTable, compare_with_paper
    from npcrepro.papers import reported

    rep = reported(PAPER, table=table)
    rep = rep[rep["case"].isna()]
    method_map = {e["label"]: ROWS[SAME_AS[e["key"]]].label
                  for e in (*paper.TABLE_I_ROWS, *paper.TABLE_II_ROWS) if e["key"] in SAME_AS}
    long = compare_with_paper(rep, results.metrics, paper=PAPER, data_source=results.data_label,
                              profile=results.profile, table=table, digits=3, method_map=method_map)
    names = {"dsc": "DSC", "ap": "AP", "dice_loss": "Dice loss"}
    order = [e["label"] for e in (paper.TABLE_I_ROWS if table == TABLE_I else paper.TABLE_II_ROWS)]
    wide = long.frame.unstack(0)
    wide = wide.swaplevel(0, 1, axis=1)
    wide = wide[[(names_k, side) for names_k in ("dsc", "ap", "dice_loss") for side in ("reported", "reproduced")]]
    wide.columns = [f"{names[m]} {side}" for m, side in wide.columns]
    wide = wide.loc[order]
    wide.index.name = "method"
    return ComparisonTable(wide, long.numbers, long.caption, long.notes)


def summary_table(results: Results) -> pd.DataFrame:
    """Reproduced mean ± sd per row (all rows run, including the pre-trainings), with training time."""
    from npcrepro.evaluation import format_mean_sd

    m = results.metrics
    out = []
    for k in [k for k in training_order(results.rows) if k in set(m["row"])]:
        g = m[m["row"] == k]
        t = results.training[results.training["row"] == k]
        out.append({"row": k, "method": ROWS[k].label, "tables": ", ".join(ROWS[k].tables) or "(pre-training)",
                    "n": len(g),
                    "DSC": format_mean_sd(g["dice"].mean(), g["dice"].std(ddof=1), 3),
                    "AP": format_mean_sd(g["ap"].mean(), g["ap"].std(ddof=1), 3),
                    "Dice loss": format_mean_sd(g["dice_loss"].mean(), g["dice_loss"].std(ddof=1), 3),
                    "s / patient": round(float(g["seconds"].mean()), 2),
                    "train s": round(float(t["train_seconds"].sum()), 1)})
    return pd.DataFrame(out).set_index("row")


def _load_case(results: Results, name: str):
    from npcrepro.datasets import open_dataset

    return open_dataset(results.data).load(name, channels=list(MODALITIES), structures=[STRUCTURE])


def _display(case, channel: str) -> np.ndarray:
    img = case.images[channel]
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def _slice_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    s = pred.sum() + ref.sum()
    return float(2 * (pred & ref).sum() / s) if s else 1.0


def fig_slices(results: Results, row: str = "mmfnet_full", case: str | None = None, n_slices: int = 4):
    """Fig. 7 style: ``n_slices`` axial slices (most tumour first) of one patient, T1 / T2 / CET1 from top
    to bottom, reference contour red, prediction blue, per-slice DSC in the column title."""
    import matplotlib.pyplot as plt

    case = case or results.figure_cases()[0]
    pred = results.prediction(case, row)
    if pred is None:
        raise DataError(f"no saved prediction of row {row!r} for case {case!r}")
    c = _load_case(results, case)
    ref = c.labels[STRUCTURE]
    area = ref.sum(axis=(1, 2))
    zs = [int(z) for z in np.argsort(-area)[:n_slices] if area[z] > 0] or [int(np.argmax(pred.sum((1, 2))))]
    zs = sorted(zs)
    box = T.bbox(ref | pred, margin=(0, 12, 12)) or tuple((0, s) for s in ref.shape)
    sl = (slice(*box[1]), slice(*box[2]))
    fig, axes = plt.subplots(3, len(zs), figsize=(2.3 * len(zs), 6.6), squeeze=False)
    for j, z in enumerate(zs):
        for i, ch in enumerate(MODALITIES):
            ax = axes[i, j]
            ax.imshow(_display(c, ch)[z][sl], cmap="gray", interpolation="nearest")
            if ref[z][sl].any():
                ax.contour(ref[z][sl], levels=[0.5], colors="red", linewidths=1.2)
            if pred[z][sl].any():
                ax.contour(pred[z][sl], levels=[0.5], colors="blue", linewidths=1.2)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"z={z}  DSC={_slice_dice(pred[z], ref[z]):.3f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(ch)
    fig.suptitle(f"{ROWS[row].label} on {case}: reference red, prediction blue", fontsize=10)
    fig.tight_layout()
    return fig


def fig_tp_fp_fn(results: Results, rows: Sequence[str] | None = None, case: str | None = None,
                 z: int | None = None):
    """Fig. 9 style: one slice, T1 / T2 / CET1 from top to bottom, one column per method; true positives
    green, false positives red, false negatives blue (first column: the reference)."""
    import matplotlib.pyplot as plt

    case = case or results.figure_cases()[0]
    rows = [r for r in (rows or results.rows) if results.prediction(case, r) is not None]
    c = _load_case(results, case)
    ref = c.labels[STRUCTURE]
    if z is None:
        z = int(np.argmax(ref.sum(axis=(1, 2))))
    preds = {r: results.prediction(case, r) for r in rows}
    union = ref[z].copy()
    for p in preds.values():
        union |= p[z]
    box = T.bbox(union, margin=14) or tuple((0, s) for s in ref.shape[1:])
    sl = (slice(*box[0]), slice(*box[1]))
    cols = [("Reference", None)] + [(ROWS[r].label, preds[r]) for r in rows]
    fig, axes = plt.subplots(3, len(cols), figsize=(1.9 * len(cols), 6.0), squeeze=False)
    for j, (title, p) in enumerate(cols):
        g = ref[z][sl]
        for i, ch in enumerate(MODALITIES):
            ax = axes[i, j]
            base = _display(c, ch)[z][sl]
            rgb = np.repeat(base[..., None], 3, axis=-1)
            over = np.zeros(base.shape + (4,))
            if p is None:
                over[g] = (0, 0.8, 0, 0.55)
            else:
                q = p[z][sl]
                over[q & g] = (0, 0.8, 0, 0.55)
                over[q & ~g] = (1, 0, 0, 0.6)
                over[~q & g] = (0, 0.3, 1, 0.6)
            ax.imshow(rgb, interpolation="nearest")
            ax.imshow(over, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title("\n".join(_wrap(title, 18)), fontsize=7)
            if j == 0:
                ax.set_ylabel(ch)
    fig.suptitle(f"{case}, slice {z}: TP green, FP red, FN blue", fontsize=10)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.replace("+", "+ ").split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip() if not cur.endswith("+") else cur + w
    return lines + ([cur] if cur else [])


# ---------------------------------------------------------------------------------------------
# chapter helpers: recipe, models, questions, more figures


def recipe_table() -> pd.DataFrame:
    """What the paper states (``npcrepro.papers.chen2020.INFO.recipe``) and where."""
    info = paper.INFO
    rows = [{"item": k, "paper": "not stated" if v["value"] is None else str(v["value"]),
             "source": v["source"], "note": v["note"]} for k, v in info.recipe.items()]
    return pd.DataFrame(rows).set_index("item")


def model_table(keys: Sequence[str], width: float = 1.0, pool_sizes=None, patch_size: int = 33) -> pd.DataFrame:
    """Parameter counts of rows at paper scale (width 1) and at ``width``."""
    from npcrepro.models import count_parameters

    out = []
    for k in keys:
        r = ROWS[k]
        out.append({"row": k, "method": r.label, "input": " + ".join(r.modalities), "kind": r.kind,
                    "parameters (paper widths)": count_parameters(build_row(k, patch_size=patch_size)),
                    f"parameters (width {width:g})": count_parameters(
                        build_row(k, width=width, pool_sizes=pool_sizes, patch_size=patch_size))})
    return pd.DataFrame(out).set_index("row")


def _row_mean(m: pd.DataFrame, key: str, metric: str = "dice") -> float:
    return float(m.loc[m["row"] == key, metric].mean())


def _reported_by_key(table: str, metric: str = "dice") -> dict[str, float]:
    """{row key: reported value} of one table (``metric``: dice, ap or dice_loss)."""
    from npcrepro.papers import reported

    name = {"dice": "dsc"}.get(metric, metric)
    rep = reported(PAPER, table=table, metric=name)
    rows = paper.TABLE_I_ROWS if table == TABLE_I else paper.TABLE_II_ROWS
    by_label = dict(zip(rep["method"], rep["value"]))
    return {r["key"]: float(by_label[r["label"]]) for r in rows}


def three_questions(results: Results, metric: str = "dice") -> pd.DataFrame:
    """The paper's three claims, each as a paired comparison on the same test patients.

    1. fusion vs the best single sequence: the best fused row run (``mmfnet_full`` if run) against the
       single-sequence row with the highest mean (chosen on the test patients, which favours the single
       side); reported: the full MMFNet vs the best single-sequence row of Table I (3D U-net (T1)).
    2. fusion block vs plain multi-encoder (both without self-transfer): ``multi_mlp_std`` vs
       ``multi_encoder_mm`` (Table II).
    3. self-transfer: ``mmfnet_full`` vs ``multi_mlp_std`` (Table II).

    Columns: the two rows, reported and reproduced mean differences (A - B), paired t-test and
    Wilcoxon p-values, n. Comparisons whose rows were not run say so.
    """
    from npcrepro.evaluation import paired_test

    m = results.metrics
    have = set(m["row"])
    rep_i, rep_ii = _reported_by_key(TABLE_I, metric), _reported_by_key(TABLE_II, metric)
    singles = [k for k in have if ROWS[k].family in ("single", "unet3d", "unet", "patch_cnn")]
    fused = [k for k in ("mmfnet_full", "multi_mlp_std", "multi_encoder_mm") if k in have]
    best_single = max(singles, key=lambda k: _row_mean(m, k, metric)) if singles else None
    paper_single = max((r["key"] for r in paper.TABLE_I_ROWS if len(r["modalities"]) == 1),
                       key=lambda k: rep_i[k])
    qs = [("1. multi-modality fusion vs the best single sequence", fused[0] if fused else None, best_single,
           rep_i["mmfnet_full"] - rep_i[paper_single],
           f"{paper.FULL} vs {ROWS[paper_single].label}"),
          ("2. fusion block vs plain multi-encoder", "multi_mlp_std", "multi_encoder_mm",
           rep_ii["multi_mlp_std"] - rep_ii["baseline"], "Table II"),
          ("3. self-transfer", "mmfnet_full", "multi_mlp_std",
           rep_ii["mmfnet_full"] - rep_ii["multi_mlp_std"], "Table II")]
    out = []
    for q, a, b, rep_d, where in qs:
        row = {"question": q, "A": ROWS[a].label if a else "—", "B": ROWS[b].label if b else "—",
               "reported A - B": round(rep_d, 4), "reported from": where}
        if a in have and b in have:
            t = paired_test(m[m["row"] == a], m[m["row"] == b], metric, on=("fold", "case"))
            row.update({"reproduced A - B": t["mean_diff"], "sd of difference": t["sd_diff"],
                        "p (paired t)": t["p_t"], "p (Wilcoxon)": t["p_wilcoxon"], "n": t["n"]})
        else:
            row.update({"reproduced A - B": np.nan, "n": 0})
        out.append(row)
    return pd.DataFrame(out).set_index("question")


def fig_case(prep: Prepared, crop: Sequence[int]):
    """One prepared patient: the three normalised sequences on the slice with most tumour, reference
    contour red, the in-plane crop the networks see in yellow, and a sagittal view."""
    import matplotlib.pyplot as plt

    z = int(prep.target.sum(axis=(1, 2)).argmax())
    (y0, y1), (x0, x1) = inplane_box(prep, crop[1:])
    fig, axes = plt.subplots(1, len(prep.channels) + 1, figsize=(3.2 * (len(prep.channels) + 1), 3.4))
    for i, ch in enumerate(prep.channels):
        ax = axes[i]
        lo, hi = CLIP_RANGES.get(ch, (None, None))
        ax.imshow(prep.image[i, z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.contour(prep.target[z], levels=[0.5], colors="red", linewidths=1)
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
        ax.set_title(f"{ch} (clipped to {lo}, {hi})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    x = int(round(prep.center[2]))
    ax = axes[-1]
    sp = prep.record.resampled.spacing if prep.record.resampled is not None else prep.spacing
    ax.imshow(prep.image[prep.channels.index("CET1") if "CET1" in prep.channels else 0, :, :, x],
              cmap="gray", aspect=sp[0] / sp[1], interpolation="nearest")
    ax.contour(prep.target[:, :, x], levels=[0.5], colors="red", linewidths=1)
    ax.set_title("sagittal (CET1)", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{prep.name}, axial slice {z}: reference red, network crop yellow", fontsize=10)
    fig.tight_layout()
    return fig


def fig_curves(results: Results, fold: int = 0):
    """Training and validation loss per row (one fold), with the self-transfer warm-up shaded."""
    import matplotlib.pyplot as plt

    base = results.run.path / f"fold_{fold}"
    keys = [k for k in training_order(results.rows) if (base / k / "curves.csv").exists()]
    n = len(keys)
    cols = min(3, max(n, 1))
    fig, axes = plt.subplots((n + cols - 1) // cols or 1, cols, figsize=(4.2 * cols, 2.8 * ((n + cols - 1) // cols or 1)),
                             squeeze=False)
    for ax, k in zip(axes.flat, keys):
        c = pd.read_csv(base / k / "curves.csv")
        epochs = np.arange(1, len(c) + 1)  # one curve row per epoch (one validation each)
        ax.plot(epochs, c["train_loss"], label="train")
        ax.plot(epochs, c["val_loss"], label="validation")
        warm = (c["stage"] == "warmup").sum()
        if warm:
            ax.axvspan(0.5, warm + 0.5, color="0.9", label="frozen encoders")
        ax.set_title(ROWS[k].label, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.05 if ROWS[k].kind != "patch" else None)
        ax.set_ylabel("Dice loss" if ROWS[k].kind != "patch" else "BCE")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
