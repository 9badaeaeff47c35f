"""guo2021 -- Guo et al., multi-scale cascaded fully convolutional network (CSCN) for NPC MRI.

Source: ``shared/papers/guo2021_cscn_mri.txt`` (received 25 April 2021, accepted 27 May 2021).

Table 1 is the only results table. V-Net "always failed to converge" and has no numbers (Table 1
prints '_'), so it is not in ``REPORTED``; see ``INFO.notes``. The inter-observer comparison of two
physicians (Sec. 4.4) is stored under method ``"Two physicians"``.
"""
from __future__ import annotations

from npcrepro.papers import Claim, PaperInfo, Reported, entry

KEY = "guo2021"

INFO = PaperInfo(
    key=KEY,
    short_title="Cascaded multi-scale FCN (CSCN) for NPC MRI",
    title="MRI Image Segmentation of Nasopharyngeal Carcinoma Using Multi-Scale Cascaded Fully Convolutional Network",
    citation=(
        "Guo Y, Cui Z, Li X, Peng J, Hu J, Yang Z, Wu T, Mumtaz I. MRI image segmentation of "
        "nasopharyngeal carcinoma using multi-scale cascaded fully convolutional network. "
        "Intelligent Automation & Soft Computing 31(3), 2022."
    ),
    journal="Intelligent Automation & Soft Computing",
    year=2022,
    doi=None,
    arxiv=None,
    modality="MRI (T1 THRIVE, 3D)",
    task="NPC tumour segmentation, 3D patches",
    dataset={
        "n_patients": 120,
        "image_size": (160, 198, 103),
        "spacing_mm": (0.6, 0.6, 3.0),
        "resampled_spacing_mm": (1.0, 1.0, 1.0),
        "summary": (
            "120 NPC patients from one hospital, T1 High Resolution Isotropic Volume Examination "
            "(THRIVE), voxel 0.6x0.6x3.0 mm; cropped to the head at the neck and above, resampled to "
            "1 mm isotropic, cropped in Z by 'up-down jitter' and in XY by a greedy removal of black "
            "area: final 160x198x103 (Sec. 4.1)."
        ),
    },
    protocol={
        "scheme": "5 rounds of random splits; predictions of all 120 patients pooled",
        "n_rounds": 5,
        "train_patients": 87,
        "val_patients": 9,
        "test_patients": 24,
        "source": "Sec. 4.2",
    },
    recipe={
        "optimizer": entry("Adam", "Sec. 4.2"),
        "lr": entry(1e-3, "Sec. 4.2"),
        "momentum": entry(None, "", "not stated (Adam betas not stated)"),
        "weight_decay": entry(None, "", "not stated"),
        "schedule": entry("exponential decay, rate 0.9 per 500 iterations", "Sec. 4.2, Fig. 6"),
        "batch_size": entry(None, "", "not stated"),
        "iterations": entry(50000, "Sec. 4.2"),
        "loss": entry(
            "focal loss with per-voxel alpha = d(v, boundary) + 1 inside the tumour, 1 outside",
            "Sec. 3.3, Eqs. (6)-(7)",
            "gamma > 0, its value not stated",
        ),
        "output_activation": entry("softmax", "Sec. 4.2"),
        "view_fusion": entry(
            "decoder", "Abstract",
            "'In the process of upsampling, the features of multiple views were fused'; the layers that "
            "fuse them are not described",
        ),
        "augmentation": entry("random patch centres, horizontal flip", "Sec. 4.1"),
        "input_size": entry(
            (24, 24, 8), "Sec. 4.2",
            "patches extracted by sliding window along the axial, coronal and sagittal directions",
        ),
        "preprocessing": entry(
            "crop head at neck and above; resample to 1x1x1 mm; crop Z (up-down jitter) and XY "
            "(greedy removal of black area) to 160x198x103",
            "Sec. 4.1",
            "no intensity normalisation stated",
        ),
    },
    architecture=(
        "cascade: BUNet (3D U-Net on image blocks) for coarse segmentation -> ACDNet (DenseNet with an "
        "ASPP module before the 1x1 bottleneck of each dense block) for fine segmentation; final map = "
        "probability fusion of coarse and fine; multi-view feature fusion in upsampling (Sec. 3.1-3.2)"
    ),
    notes=(
        "V-Net 'always failed to converge and the prediction result could not be obtained' (Sec. 4.4); "
        "Table 1 prints '_' for it, so it has no REPORTED record.",
        "Two physicians each annotated 28 patients; one used as ground truth, the other as prediction "
        "(Sec. 4.4).",
        "Journal, volume and year are not in the extracted text (only received/accepted dates); they "
        "come from the digest.",
    ),
)

HEADLINE = ("Table 1", "CSCN")

METHOD_ALIASES = {"DeepLab": "Deeplab", "Ours": "CSCN", "physicians": "Two physicians"}

# Table 1: (method, DSC, ASSD mm, F1)
_TABLE1 = (
    ("CNN", 0.707, 1.514, 0.728),
    ("ACDNet", 0.712, 1.493, 0.741),
    ("Deeplab", 0.714, 1.399, 0.722),
    ("CSCN", 0.741, 1.212, 0.756),
)

REPORTED: list[Reported] = [
    r
    for m, dsc, assd, f1 in _TABLE1
    for r in (
        Reported("Table 1", m, "dsc", dsc),
        Reported("Table 1", m, "assd", assd, unit="mm"),
        Reported("Table 1", m, "f1", f1),
    )
] + [
    Reported("Sec. 4.4", "Two physicians", "dsc", 0.642, note="inter-observer, 28 patients"),
    Reported("Sec. 4.4", "Two physicians", "assd", 2.692, unit="mm", note="inter-observer, 28 patients"),
    Reported("Sec. 4.4", "Two physicians", "f1", 0.686, note="inter-observer, 28 patients"),
]

CITED: list[Reported] = []

CLAIMS: list[Claim] = []
