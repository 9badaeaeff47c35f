"""chen2020 -- Chen et al., MMFNet: multi-modality MRI fusion network for NPC segmentation.

Source: ``shared/papers/chen2020_mmfnet.txt`` (the preprint version; published in Neurocomputing
394:27-40, 2020, as guo2021's reference [17] confirms).

Rows of Table I (13 methods) and Table II (12 ablations) keep the paper's labels as ``method``;
:data:`TABLE_I_ROWS` / :data:`TABLE_II_ROWS` give each row a key and its configuration, in table
order, so a chapter can match its own runs to rows (``row["label"] == record.method``). The
"Multi-encoder multi-modality network" row and the full MMFNet row appear in both tables with the
same numbers; they are stored once per table.
"""
from __future__ import annotations

from typing import Any

from npcrepro.papers import Claim, PaperInfo, Reported, entry

KEY = "chen2020"

FULL = "MMFNet+multi-MLP+stdPool+self-transfer"
ALL3 = ("T1", "T2", "CET1")

INFO = PaperInfo(
    key=KEY,
    short_title="MMFNet: multi-modality MRI fusion",
    title="MMFNet: A Multi-modality MRI Fusion Network for Segmentation of Nasopharyngeal Carcinoma",
    citation=(
        "Chen H, Qi Y, Yin Y, Li T, Gong G, Wang L. MMFNet: A multi-modality MRI fusion network for "
        "segmentation of nasopharyngeal carcinoma. Neurocomputing 394:27-40, 2020."
    ),
    journal="Neurocomputing",
    year=2020,
    doi=None,
    arxiv=None,
    modality="MRI (T1, T2, contrast-enhanced T1; 3.0 T)",
    task="NPC tumour (GTV) segmentation, 3D",
    dataset={
        "n_patients": 149,
        "modalities": ALL3,
        "spacing_mm": {"xy": (0.33, 0.69), "z": (3.5, 5.5)},
        "resampled_spacing_mm": {"xy": 0.5, "z": "kept"},
        "summary": (
            "149 patients, Shandong Cancer Hospital, Philips Ingenia 3.0T; T1, CET1, T2 with CET1 and "
            "T2 aligned to T1; XY spacing 0.33-0.69 mm resampled to 0.5x0.5 mm, Z spacing 3.5-5.5 mm "
            "kept; ground truth by one experienced radiologist, slice by slice (Sec. IV-A)."
        ),
    },
    protocol={
        "scheme": "5-fold cross-validation; 25% of the training data held out for validation",
        "n_folds": 5,
        "validation_fraction": 0.25,
        "model_selection": "best model on validation; early stopping after 10 epochs without "
                           "validation-loss decrease",
        "source": "Sec. IV-C",
    },
    recipe={
        "optimizer": entry("Adam", "Sec. IV-C"),
        "lr": entry(
            {"single_modality": 1e-3, "mmfnet_warmup": 1e-3, "mmfnet": 1e-4}, "Sec. IV-C",
            "single-modality networks at 1e-3; MMFNet: encoders frozen for 5 epochs at 1e-3 to warm "
            "up the decoder, then all parameters at 1e-4",
        ),
        "momentum": entry(None, "", "not stated (Adam betas not stated)"),
        "weight_decay": entry(None, "", "not stated"),
        "schedule": entry("5 warm-up epochs with frozen encoders (1e-3), then 1e-4 constant", "Sec. IV-C"),
        "batch_size": entry(8, "Sec. IV-C"),
        "epochs": entry(100, "Sec. IV-C", "maximum; 75 updates per epoch"),
        "updates_per_epoch": entry(75, "Sec. IV-C"),
        "early_stopping": entry(10, "Sec. IV-C", "epochs without validation-loss decrease"),
        "loss": entry("Dice loss, epsilon = 1", "Sec. III-A, Eq. (1)"),
        "loss_form": entry(
            "eq1", "Sec. III-A, Eq. (1)",
            "Loss = 1 - 2 x (sum p g + eps) / (sum p + sum g + eps): eps inside the factor 2 on top",
        ),
        "precision": entry(
            "float32", "Sec. IV-C",
            "not stated; implied by the framework (PyTorch 0.4.1 had no automatic mixed precision)",
        ),
        "augmentation": entry(
            "on the fly: random centre offset (-4,-32,-32)..(4,32,32), random vertical flip, random "
            "rotation in the XY plane -5..5 deg",
            "Sec. IV-A",
        ),
        "input_size": entry((16, 256, 256), "Sec. IV-A", "sliding window on Z with step 4"),
        "preprocessing": entry(
            "resample XY to 0.5 mm; intra-body intensity normalisation [40]; clip T1 [-2, 1], T2 "
            "[-3, 2], CET1 [-2, 3.5]; OTSU 3D bounding box, 16x256x256 crop around its centre",
            "Sec. IV-A",
        ),
        "self_transfer": entry(
            "train three single-modality encoder-decoders, copy their encoders into MMFNet",
            "Sec. III-C, Sec. IV-C",
        ),
        "reduction_ratio": entry(12, "Sec. III-B", "channel-attention MLP hidden size 3C/r"),
        "framework": entry("PyTorch 0.4.1, Windows 10", "Sec. IV-C"),
        "hardware": entry("2x NVIDIA Titan Xp 12 GB, Xeon E5-2620 v4, 64 GB RAM", "Sec. IV-C"),
    },
    architecture=(
        "one VGG-like 3D encoder per modality (4 blocks of two 3x3x3 conv-BN-ReLU + 2x2x2 max pool; 8, "
        "16, 32, 64 channels; one extra 64-channel conv); one decoder (deconv, concat with fused skip, "
        "conv; 64, 32, 16, 8) -> conv + sigmoid; fusion block per skip level: channel attention "
        "(avg/max/std pooling, one MLP each, r = 12), spatial attention (avg/max/std along channels -> "
        "3x3x3 conv -> sigmoid), residual fusion (1x1x1 conv to C, residual block of two 1x3x3 convs)"
    ),
    notes=(
        "Inference about 9 s per patient vs 10-20 min for an experienced radiologist (Sec. V).",
        "Sec. IV-E (i) says 'As shown in Table II' for a comparison whose rows are in Table I.",
        "The text's improvements '11.08%, 6.39%, 1.86%' are absolute DSC differences (points), not "
        "relative percentages (see CLAIMS).",
        "No DOI or arXiv identifier in the extracted text; the journal reference comes from guo2021's "
        "reference [17] and the digest.",
    ),
)

HEADLINE = ("Table I", FULL)

METHOD_ALIASES = {
    "MMFNet": FULL,
    "Ours": FULL,
    "baseline": "Multi-encoder multi-modality network (baseline)",
}


def _row(key: str, label: str, family: str, dims: str, modalities: tuple[str, ...], *,
         fusion_block: bool = False, shared_mlp: bool | None = None, std_channel: bool = False,
         std_spatial: bool = False, self_transfer: bool = False) -> dict[str, Any]:
    return {
        "key": key, "label": label, "family": family, "dims": dims, "modalities": modalities,
        "fusion_block": fusion_block, "shared_mlp": shared_mlp, "std_channel": std_channel,
        "std_spatial": std_spatial, "self_transfer": self_transfer,
    }


def _mmf(key: str, label: str, *, shared: bool, stdc: bool, stds: bool, st: bool,
         modalities: tuple[str, ...] = ALL3) -> dict[str, Any]:
    return _row(key, label, "mmfnet", "3D", modalities, fusion_block=True, shared_mlp=shared,
                std_channel=stdc, std_spatial=stds, self_transfer=st)


#: Table I rows in order. ``family``: patch_cnn (2D patch classifier), mm_patch_cnn (Siamese-like
#: multi-modality patch CNN [13]), unet (2D U-Net), unet3d, single_encoder (modalities stacked as
#: channels, encoder channels x3), multi_encoder (3 encoders, no fusion block, no self-transfer),
#: mmfnet. ``shared_mlp`` is None where there is no channel attention.
TABLE_I_ROWS: list[dict[str, Any]] = [
    _row("patch_cnn_t1", "Patch-based CNN (T1)", "patch_cnn", "2D", ("T1",)),
    _row("patch_cnn_t2", "Patch-based CNN (T2)", "patch_cnn", "2D", ("T2",)),
    _row("patch_cnn_cet1", "Patch-based CNN (CET1)", "patch_cnn", "2D", ("CET1",)),
    _row("mm_patch_cnn", "Multi-modality patch-based CNN", "mm_patch_cnn", "2D", ALL3),
    _row("unet2d_t1", "U-net (T1)", "unet", "2D", ("T1",)),
    _row("unet2d_t2", "U-net (T2)", "unet", "2D", ("T2",)),
    _row("unet2d_cet1", "U-net (CET1)", "unet", "2D", ("CET1",)),
    _row("unet3d_t1", "3D U-net (T1)", "unet3d", "3D", ("T1",)),
    _row("unet3d_t2", "3D U-net (T2)", "unet3d", "3D", ("T2",)),
    _row("unet3d_cet1", "3D U-net (CET1)", "unet3d", "3D", ("CET1",)),
    _row("single_encoder_mm", "Single-encoder multi-modality network", "single_encoder", "3D", ALL3),
    _row("multi_encoder_mm", "Multi-encoder multi-modality network", "multi_encoder", "3D", ALL3),
    _mmf("mmfnet_full", FULL, shared=False, stdc=True, stds=True, st=True),
]

#: Table II rows in order. "Base MMFNet" = fusion block with 3D CBAM (one shared MLP, avg+max
#: pooling) + residual fusion block; "multi-MLP" = one MLP per pooled feature; "stdPool" = std
#: pooling in the channel and/or spatial attention; the last three rows use two modalities.
TABLE_II_ROWS: list[dict[str, Any]] = [
    _row("baseline", "Multi-encoder multi-modality network (baseline)", "multi_encoder", "3D", ALL3),
    _mmf("base_mmfnet", "Base MMFNet", shared=True, stdc=False, stds=False, st=False),
    _mmf("multi_mlp", "MMFNet+multi-MLP", shared=False, stdc=False, stds=False, st=False),
    _mmf("multi_mlp_std_channel", "MMFNet+multi-MLP+stdPool (channel-attention)",
         shared=False, stdc=True, stds=False, st=False),
    _mmf("multi_mlp_std_spatial", "MMFNet+multi-MLP+stdPool (spatial-attention)",
         shared=False, stdc=False, stds=True, st=False),
    _mmf("multi_mlp_std", "MMFNet+multi-MLP+stdPool", shared=False, stdc=True, stds=True, st=False),
    _mmf("base_mmfnet_st", "Base MMFNet+self-transfer", shared=True, stdc=False, stds=False, st=True),
    _mmf("multi_mlp_st", "MMFNet+multi-MLP+self-transfer", shared=False, stdc=False, stds=False, st=True),
    _mmf("mmfnet_full", FULL, shared=False, stdc=True, stds=True, st=True),
    _mmf("full_t1_t2", FULL + "(T1&T2)", shared=False, stdc=True, stds=True, st=True, modalities=("T1", "T2")),
    _mmf("full_t1_cet1", FULL + "(T1&CET1)", shared=False, stdc=True, stds=True, st=True,
         modalities=("T1", "CET1")),
    _mmf("full_t2_cet1", FULL + "(T2&CET1)", shared=False, stdc=True, stds=True, st=True,
         modalities=("T2", "CET1")),
]

# (DSC, AP, Loss_dice) per row, in table order
_TABLE_I = (
    (0.5195, 0.5320, 0.4818),
    (0.4939, 0.4984, 0.5074),
    (0.5693, 0.5828, 0.4314),
    (0.6083, 0.6307, 0.3930),
    (0.5895, 0.6169, 0.4119),
    (0.5589, 0.5777, 0.4422),
    (0.6012, 0.6142, 0.3995),
    (0.6817, 0.7202, 0.3361),
    (0.6589, 0.6920, 0.3610),
    (0.6222, 0.6456, 0.3921),
    (0.6552, 0.6954, 0.3556),
    (0.7005, 0.7439, 0.3141),
    (0.7191, 0.7721, 0.2907),
)
_TABLE_II = (
    (0.7005, 0.7439, 0.3141),
    (0.7007, 0.7494, 0.3129),
    (0.7083, 0.7508, 0.3046),
    (0.7095, 0.7602, 0.3015),
    (0.7010, 0.7482, 0.3123),
    (0.7189, 0.7648, 0.2938),
    (0.7095, 0.7589, 0.3018),
    (0.7128, 0.7659, 0.2971),
    (0.7191, 0.7721, 0.2907),
    (0.7098, 0.7598, 0.3026),
    (0.7034, 0.7542, 0.3079),
    (0.6943, 0.7372, 0.3189),
)


def _table(name: str, rows: list[dict[str, Any]], values: tuple) -> list[Reported]:
    out: list[Reported] = []
    for row, (dsc, ap, loss) in zip(rows, values, strict=True):
        note = f"row {row['key']}; modalities {'+'.join(row['modalities'])}"
        out += [
            Reported(name, row["label"], "dsc", dsc, note=note),
            Reported(name, row["label"], "ap", ap, note=note),
            Reported(name, row["label"], "dice_loss", loss, note=note),
        ]
    return out


REPORTED: list[Reported] = [
    *_table("Table I", TABLE_I_ROWS, _TABLE_I),
    *_table("Table II", TABLE_II_ROWS, _TABLE_II),
    *[Reported("Fig. 7", FULL, "dsc", v, case=c, note="single 2D slice")
      for c, v in (("(a)", 0.915), ("(b)", 0.870), ("(c)", 0.902), ("(d)", 0.898))],
    *[Reported("Fig. 8", FULL, "dsc", v, case=c, note="3D example")
      for c, v in (("(a)", 0.860), ("(b)", 0.853), ("(c)", 0.821), ("(d)", 0.847))],
    Reported("Sec. V", FULL, "seconds_per_patient", 9, unit="s", note="'about 9s' per patient",
             printed=("about 9s",)),
    Reported("Sec. V", "Experienced radiologist (manual)", "seconds_per_patient", 600, low=600, high=1200,
             unit="s", note="printed '10 to 20 minutes'; value is the lower end",
             printed=("10 to 20 minutes",)),
]

CITED: list[Reported] = []

_I = "Table I"
CLAIMS: list[Claim] = [
    Claim("Sec. IV-E (i)", "vs the best 2D method (Multi-modality patch-based CNN): DSC +11.08%", "dsc",
          0.1108, (_I, FULL), (_I, "Multi-modality patch-based CNN"), printed=("11.08%",)),
    Claim("Sec. IV-E (i)", "vs the best 2D method: AP +14.14%", "ap",
          0.1414, (_I, FULL), (_I, "Multi-modality patch-based CNN"), printed=("14.14%",)),
    Claim("Sec. IV-E (i)", "vs the best 2D method: Loss_dice -0.1023", "dice_loss",
          0.1023, (_I, FULL), (_I, "Multi-modality patch-based CNN"), printed=("0.1023",)),
    Claim("Sec. IV-E (ii)", "vs single-encoder network: DSC +6.39%", "dsc",
          0.0639, (_I, FULL), (_I, "Single-encoder multi-modality network"), printed=("6.39%",)),
    Claim("Sec. IV-E (ii)", "vs single-encoder network: AP +7.67%", "ap",
          0.0767, (_I, FULL), (_I, "Single-encoder multi-modality network"), printed=("7.67%",)),
    Claim("Sec. IV-E (ii)", "vs single-encoder network: Loss_dice -0.0649", "dice_loss",
          0.0649, (_I, FULL), (_I, "Single-encoder multi-modality network"), printed=("0.0649",)),
    Claim("Sec. IV-E (iii)", "vs multi-encoder network: DSC +1.86%", "dsc",
          0.0186, (_I, FULL), (_I, "Multi-encoder multi-modality network"), printed=("1.86%",)),
    Claim("Sec. IV-E (iii)", "vs multi-encoder network: AP +2.82%", "ap",
          0.0282, (_I, FULL), (_I, "Multi-encoder multi-modality network"), printed=("2.82%",)),
    Claim("Sec. IV-E (iii)", "vs multi-encoder network: Loss_dice -0.0234", "dice_loss",
          0.0234, (_I, FULL), (_I, "Multi-encoder multi-modality network"), printed=("0.0234",)),
]
