"""chen2020 (MMFNet): the rows of Tables I and II as methods of the experiment runner.

Every row is a method named by its key in :data:`npcrepro.chapters.chen2020.paper.TABLE_I_ROWS` /
:data:`~npcrepro.chapters.chen2020.paper.TABLE_II_ROWS` (``baseline`` of Table II is Table I's
``multi_encoder_mm``, trained once), plus the three modality-specific encoder-decoders self-transfer
starts from (``single_t1``, ``single_t2``, ``single_cet1``; MMFNet's own encoder and decoder on one
sequence, Sec. III-C): methods of their own, which the self-transfer rows run ``after`` and load with
:meth:`~npcrepro.engine.experiment.JobContext.model_of`.

Training (Sec. IV-C): Adam, Dice loss (eps 1; Eq. 1 as printed with ``dice_form="eq1"``), early stopping on a quarter of the training patients;
self-transfer rows freeze the copied encoders for ``warmup_epochs`` at ``lr``, then train everything
at ``lr_finetune``. Inference: the training windows along z (step ``z_step``), overlaps averaged, zero
outside the in-plane crop, mapped back to the case's grid. Scores per patient: every metric of
:mod:`npcrepro.evaluation` plus AP and the Dice loss (Eq. 1, eps 1, on the probabilities).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from npcrepro import transforms as T
from npcrepro.chapters.chen2020.prepare import MODALITIES, STRUCTURE, prepare_for, training_data
from npcrepro.chapters.chen2020.samplers import crop_channels, inplane_box, z_window_starts
from npcrepro.engine.experiment import Chapter, Method
from npcrepro.errors import DataError, ParameterError
from npcrepro.chapters.chen2020 import paper

__all__ = ["TABLE_I", "TABLE_II", "Row", "ROWS", "SAME_AS", "select_rows", "training_order", "build_row",
           "network", "make_loss", "stages_for", "predict_working", "dice_loss", "Chen2020", "CHAPTER"]

TABLE_I, TABLE_II = "Table I", "Table II"
UNET2D_WIDTHS = (32, 64, 128, 256, 512)
UNET3D_WIDTHS = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Row:
    """One runnable row: the paper's configuration (``config``) and how it runs (``kind``: "3d"
    windows, "2d" slices or "patch" classifier)."""

    key: str
    label: str
    tables: tuple[str, ...]
    family: str
    kind: str
    modalities: tuple[str, ...]
    self_transfer: bool = False
    config: Mapping[str, Any] = None

    @property
    def after(self) -> tuple[str, ...]:
        return tuple(f"single_{m.lower()}" for m in self.modalities) if self.self_transfer else ()

    def method(self) -> Method:
        return Method(self.key, self.label, self.after,
                      {"tables": list(self.tables), "family": self.family, "kind": self.kind,
                       "modalities": list(self.modalities), "self_transfer": self.self_transfer})


#: Keys that name the same model as another row: trained once, under the key on the right.
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


#: Every runnable row by key (Table I, Table II, then the three pre-trainings): 26 distinct models.
ROWS: dict[str, Row] = _rows()


def select_rows(selection: str | Sequence[str]) -> list[str]:
    """Row keys from ``"all"``, ``"table1"``, ``"table2"``, a comma-separated string or a list;
    aliases (``baseline``) map to the row that is trained."""
    if isinstance(selection, str):
        s = selection.strip().lower()
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
            raise ParameterError(f"unknown chen2020 row {k!r} (valid: {', '.join(ROWS)}, or all, table1, table2)")
        if k not in out:
            out.append(k)
    return out


def training_order(keys: Sequence[str]) -> list[str]:
    """The pre-trainings self-transfer needs first, then the rest in the given order."""
    need = [a for k in keys for a in ROWS[k].after]
    singles = [f"single_{m.lower()}" for m in MODALITIES if f"single_{m.lower()}" in set(need) | set(keys)]
    return singles + [k for k in keys if k not in singles]


# ---------------------------------------------------------------------------------------------
# networks, losses, stages


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
        return models.build("patchcnn2d", in_channels=n, patch_size=patch_size, width=width,
                            branches="per_channel" if n > 1 else "shared")
    if row.family in ("unet", "unet3d"):
        name, widths = ("unet2d", UNET2D_WIDTHS) if row.family == "unet" else ("unet3d", UNET3D_WIDTHS)
        net = models.build(name, in_channels=n, widths=M.scaled(widths, width), init=None)
        M.init_output(net.head)  # the same output initialisation as every other row
        return net
    if row.family == "single_encoder":
        return models.build("single_encoder3d", in_channels=n, width=width, pool_sizes=pool_sizes)
    if row.family in ("multi_encoder", "single"):
        return models.build("mmfnet", modalities=row.modalities, fusion="concat", width=width,
                            pool_sizes=pool_sizes)
    if row.family == "mmfnet":
        return models.build(
            "mmfnet", modalities=row.modalities, fusion="block", shared_mlp=bool(c["shared_mlp"]),
            channel_pools=("avg", "max") + (("std",) if c["std_channel"] else ()),
            spatial_pools=("avg", "max") + (("std",) if c["std_spatial"] else ()),
            width=width, pool_sizes=pool_sizes)
    raise ParameterError(f"row {key!r}: unknown family {row.family!r}")


def network(name: str, *, width: float, in_channels: int, profile: str = "cpu") -> nn.Module:
    """Row ``name``'s network as the leaderboard trains it: channel multiplier ``width``, the rest
    (pooling sizes, patch size) from this chapter's recipe at ``profile``; ``in_channels`` must be
    the row's number of sequences."""
    from npcrepro import recipes

    sizes = recipes.load("chen2020").PROFILES.get(profile)
    if sizes is None:
        raise ParameterError(f"unknown profile {profile!r} for chen2020")
    row = ROWS.get(SAME_AS.get(name, name))
    if row is not None and len(row.modalities) != int(in_channels):
        raise ParameterError(f"chen2020 row {name!r} takes {len(row.modalities)} input channel(s) "
                             f"({', '.join(row.modalities)}), not {in_channels}")
    return build_row(name, width=float(width), pool_sizes=sizes.get("pool_sizes"),
                     patch_size=int(sizes["patch_size"]))


def make_loss(kind: str, form: str = "eq1") -> nn.Module:
    """Dice loss (eps 1) for the segmentation networks: ``form="eq1"`` is Eq. 1 as printed,
    1 - 2 (sum pg + 1) / (sum p + sum g + 1) per window; ``"smoothed"`` puts eps once on top,
    1 - (2 sum pg + 1) / (sum p + sum g + 1). Binary cross-entropy for the patch classifiers (their
    output is one pixel's logit)."""
    from npcrepro.losses import DiceLoss

    if form not in ("eq1", "smoothed"):
        raise ParameterError(f"dice_form must be 'eq1' or 'smoothed', got {form!r}")
    if kind == "patch":
        return nn.BCEWithLogitsLoss()
    return DiceLoss(eps=1.0, activation="sigmoid", literal=form == "eq1")


def stages_for(row: Row, model: nn.Module, P: Mapping[str, Any]):
    """One Adam stage with early stopping, or, with self-transfer, a warm-up with frozen encoders
    (``warmup_epochs`` at ``lr``) then everything at ``lr_finetune``."""
    from npcrepro.engine import Stage
    from npcrepro.models.mmfnet import encoder_prefixes

    epochs, patience = int(P["epochs"]), P.get("patience")
    if row.self_transfer:
        warm = min(int(P["warmup_epochs"]), epochs)
        return [Stage("warmup", epochs=warm, optimizer="adam", lr=float(P["lr"]),
                      frozen=encoder_prefixes(model), forward_kwargs={"freeze_encoders": True}),
                Stage("finetune", epochs=max(epochs - warm, 1), optimizer="adam",
                      lr=float(P["lr_finetune"]), early_stopping=patience)]
    return [Stage("train", epochs=epochs, optimizer="adam", lr=float(P["lr"]), early_stopping=patience)]


# ---------------------------------------------------------------------------------------------
# inference and the paper's extra metric


@torch.no_grad()
def predict_working(model: nn.Module, row: Row, prep, P: Mapping[str, Any], device=None) -> np.ndarray:
    """Tumour probabilities (z, y, x) float32 on the working grid: windows along z (step ``z_step``),
    overlaps averaged (3D rows), every slice (2D rows), every pixel's patch (patch CNNs); zero outside
    the in-plane crop."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev).eval()
    depth, h, w = (int(v) for v in P["crop"])
    nz = prep.image.shape[1]
    idx = prep.channel_index(row.modalities)
    fills = [prep.fills[i] for i in idx]
    image = prep.image[idx]
    (y0, y1), (x0, x1) = inplane_box(prep, (h, w))
    acc = np.zeros((nz, h, w), np.float32)
    cnt = np.zeros((nz, 1, 1), np.float32)
    bs = int(P.get("infer_batch") or 4)
    if row.kind == "3d":
        starts = z_window_starts(nz, depth, int(P["z_step"]))
        for b in range(0, len(starts), bs):
            chunk = starts[b:b + bs]
            x = np.stack([crop_channels(image, ((z, z + depth), (y0, y1), (x0, x1)), fills) for z in chunk])
            p = torch.sigmoid(model(torch.from_numpy(x).to(dev)).float())[:, 0].cpu().numpy()
            for z, pz in zip(chunk, p):
                a, b_ = max(z, 0), min(z + depth, nz)
                acc[a:b_] += pz[a - z:b_ - z]
                cnt[a:b_] += 1
    else:
        r = int(P["patch_size"]) // 2 if row.kind == "patch" else 0
        vol = crop_channels(image, ((0, nz), (y0 - r, y1 + r), (x0 - r, x1 + r)), fills)
        for b in range(0, nz, bs * 4):
            x = torch.from_numpy(np.ascontiguousarray(vol[:, b:b + bs * 4].transpose(1, 0, 2, 3))).to(dev)
            acc[b:b + bs * 4] = torch.sigmoid(model(x).float())[:, 0].cpu().numpy()
        cnt[:] = 1
    prob = acc / np.maximum(cnt, 1)
    return T.uncrop(prob, ((0, nz), (y0, y1), (x0, x1)), prep.image.shape[1:]).astype(np.float32)


def dice_loss(prob: np.ndarray, reference: np.ndarray, eps: float = 1.0) -> float:
    """The paper's per-patient Dice loss, Eq. 1 over the volume: 1 - 2 (sum pg + eps) / (sum p + sum g
    + eps), on the probabilities (dimensionless; -1 for an empty prediction of an empty reference)."""
    p = np.clip(np.asarray(prob, np.float64), 0.0, 1.0)
    g = np.asarray(reference, bool).astype(np.float64)
    return 1.0 - 2.0 * (float((p * g).sum()) + eps) / (float(p.sum()) + float(g.sum()) + eps)


# ---------------------------------------------------------------------------------------------
# the chapter


class Chen2020(Chapter):
    name = "chen2020"
    channels = MODALITIES
    structures = (STRUCTURE,)

    def methods(self, P):
        return [ROWS[k].method() for k in training_order(select_rows(P["methods"]))]

    def all_methods(self, P):
        return [r.method() for r in ROWS.values()]

    def cases(self, dataset, P):
        missing = [c for c in MODALITIES if c not in dataset.channels]
        if missing or STRUCTURE not in dataset.structures:
            raise DataError(f"{getattr(dataset, 'root', dataset)}: chen2020 needs channels {list(MODALITIES)} "
                            f"and structure {STRUCTURE!r}; the dataset has channels {dataset.channels} and "
                            f"structures {dataset.structures} (convert Li-2024 data with "
                            f"`npcrepro convert li2024 SRC DST`)")
        return super().cases(dataset, P)

    def build(self, method, P):
        return build_row(method.name, width=float(P["width"]), pool_sizes=P.get("pool_sizes"),
                         patch_size=int(P["patch_size"]))

    def prepare(self, case, P):
        return prepare_for(case, P)

    def fit(self, method, train, val, ctx):
        from npcrepro.engine import Trainer
        from npcrepro.models.mmfnet import transfer_encoders

        P, row = ctx.P, ROWS[method.name]
        model = self.build(method, P)
        if row.self_transfer:
            transfer_encoders(model, {m: ctx.model_of(f"single_{m.lower()}") for m in row.modalities})
        tr, va = training_data(row.kind, row.modalities, train, val, P)
        batch = int(P["patch_batch_size"] if row.kind == "patch" else P["batch_size"])
        trainer = Trainer(model, make_loss(row.kind, P["dice_form"]), tr, val_data=va,
                          stages=stages_for(row, model, P), batch_size=batch,
                          iterations_per_epoch=int(P["iterations_per_epoch"]), amp=bool(P["amp"]),
                          **ctx.trainer_args())
        history = ctx.fit(trainer)
        ctx.facts.update(label=row.label, iterations=history.iterations, best_val_loss=history.best_val_loss,
                         stopped_early=",".join(history.stopped_early))
        return model

    def predict(self, method, model, prepared, ctx):
        prob = predict_working(model, ROWS[method.name], prepared, ctx.P, device=ctx.device)
        prob = T.invert(prob, prepared.record, order="linear")
        return {STRUCTURE: np.asarray(prob, np.float32)}

    def score(self, method, prepared, probs, masks, ctx):
        from npcrepro.evaluation import evaluate_cases

        case = prepared.case
        rows = evaluate_cases({case.name: dict(masks)}, [case],
                              probabilities={case.name: dict(probs)}).to_dict("records")
        for r in rows:
            r["dice_loss"] = dice_loss(probs[r["structure"]], case.labels[r["structure"]])
        return rows


CHAPTER = chen2020 = Chen2020()
