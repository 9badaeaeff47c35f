"""luo2020 -- Luo et al., two-stage U-Net for tissue segmentation in nasopharyngeal CT.

Source: ``shared/papers/luo2020_two_stage_ct.txt`` (CMC 65(2):1771-1780, 2020).

The only numbers the paper reports are Table 1 (averages over 14 structures and 5 folds). Fig. 4
(DSC per fold) and Fig. 5 (box plots per method over folds) print no values, and there are no
per-structure numbers anywhere in the text.

Internal-consistency audit (a fact about the paper, shown by the book, not corrected here): for
hard masks JSC = DSC / (2 - DSC) <= DSC and F1 = DSC, yet Table 1 has JSC > DSC for every method
and F1 != DSC ("Ours": DSC .8251, JSC .8732, F1 .9564). The paper's DSC is the soft L2 form of
Eq. (4) and its JSC is never defined, so the four columns are not computed on the same masks.
"""
from __future__ import annotations

from npcrepro.papers import Claim, PaperInfo, Reported, entry

KEY = "luo2020"

INFO = PaperInfo(
    key=KEY,
    short_title="Two-stage U-Net for nasopharyngeal CT tissues",
    title="Tissue Segmentation in Nasopharyngeal CT Images Using Two-Stage Learning",
    citation=(
        "Luo Y, Li X, Luo C, Wang F, Wu X, Mumtaz I, Yi C. Tissue segmentation in nasopharyngeal CT "
        "images using two-stage learning. Computers, Materials & Continua 65(2):1771-1780, 2020. "
        "doi:10.32604/cmc.2020.010069"
    ),
    journal="Computers, Materials & Continua",
    year=2020,
    doi="10.32604/cmc.2020.010069",
    arxiv=None,
    modality="CT",
    task="multi-structure tissue segmentation (tumour targets and organs at risk), 2D slices",
    dataset={
        "n_patients": 124,
        "n_slices": 8889,
        "image_size": (512, 512),
        "spacing_mm": None,
        "n_structures": 14,
        "structures": (
            "locref", "CTV2", "CTVnd", "Mandible L", "Mandible R", "Parotid L", "Parotid R",
            "Brain Stem", "Spinal Cord", "Eyes L", "Eyes R", "Optic Nerves L", "Optic Nerves R",
            "Optic Chiasm",
        ),
        "summary": (
            "124 nasopharyngeal-carcinoma CT images, 512x512, West China Hospital of Sichuan University; "
            "14 target structures; 3D volumes cut into 2D slices, slices without labels removed: "
            "8889 slices (Sec. 3.1). Voxel spacing not stated."
        ),
    },
    protocol={
        "scheme": "5-fold cross-validation over 2D slices",
        "n_folds": 5,
        "train_slices": 7112,
        "test_slices": 1777,
        "model_selection": "'the model that performs the best on test data set are saved' (Sec. 3.3)",
        "split_unit": ("not stated whether folds are split by patient or by slice; 1777 = floor(8889 / 5) and "
                       "7112 = 8889 - 1777, the smallest fold of a 5-fold split of the slices themselves, "
                       "point to slices"),
        "source": "Sec. 3.1, Sec. 3.3",
    },
    recipe={
        "optimizer": entry(None, "", "not stated"),
        "lr": entry(1e-3, "Sec. 3.3"),
        "momentum": entry(None, "", "not stated"),
        "weight_decay": entry(None, "", "not stated"),
        "schedule": entry("exponential decay, rate 0.9 every 10 iterations", "Sec. 3.3"),
        "batch_size": entry(None, "", "not stated"),
        "epochs": entry(100, "Sec. 3.3"),
        "sampling": entry("uniform", "Sec. 3.1, Sec. 3.3",
                          "not named; implied: 100 epochs over the 7112 training slices"),
        "loss": entry(
            "beta * Dice + (1 - beta) * Focal; Dice with foreground and background terms and smoothing "
            "epsilon (Eq. 1), focal with alpha and gamma (Eq. 2)",
            "Sec. 2.2, Eqs. (1)-(3)",
            "values of alpha, beta, gamma and epsilon not stated (only their ranges)",
        ),
        "augmentation": entry(None, "", "not stated"),
        "input_size": entry((512, 512), "Sec. 1, Sec. 3.1"),
        "structures": entry("all 14 (dataset['structures']), one network with an output per structure",
                            "Sec. 3.1, Sec. 3.4", "'14 different types of tissue in each image' (Sec. 3.4)"),
        "preprocessing": entry(
            "3D CT cut into 2D slices; slices without labels removed", "Sec. 3.1",
            "no intensity windowing/normalisation stated",
        ),
        "monitor_metric": entry("accuracy", "Sec. 3.3", "'we use accuracy as the quantization metric'"),
        "framework": entry("Python 2.7, TensorFlow and Keras", "Sec. 3.3"),
        "hardware": entry("NVIDIA Tesla M40", "Sec. 3.3"),
    },
    architecture=(
        "stage 1 'denoising'/rough module: U-Net with 5 conv and deconv layers (conv-BN-ReLU); stage 2: "
        "shallow 3-layer U-Net refining stage 1's map; skip connections; MSP (multi-scale average "
        "pooling) block fusing average pooling with kernels 1, 3, 5, 7 (Sec. 2.1, Figs. 1-2)"
    ),
    notes=(
        "Table 1 has JSC > DSC and F1 != DSC for every method, impossible for metrics of the same hard "
        "masks; the book shows this check.",
        "The FN/FP definitions under Eq. (6) are garbled ('FN is the number of negative samples with "
        "incorrect prediction').",
        "JSC is described but never defined by a formula; AUC by the rank formula Eq. (5).",
        "Fig. 4 (DSC per fold) and Fig. 5 (box plots) print no numbers; no per-structure results.",
    ),
)

HEADLINE = ("Table 1", "Ours")
#: Table 1's DSC is the soft DSC of Eq. (4), averaged over the 14 structures (module docstring).
HEADLINE_METRIC = ("soft_dice", "14 structures")

METHOD_ALIASES = {"FCN": "FCN-8", "FCN8": "FCN-8", "MaskRCNN": "Mask R-CNN", "two-stage": "Ours"}

_T1_NOTE = "average over the 14 structures and the 5 folds ('the average of the four indicators')"

# Table 1: (method, DSC, AUC, F1, JSC)
_TABLE1 = (
    ("U-Net", 0.7528, 0.7326, 0.7975, 0.7832),
    ("FCN-8", 0.6808, 0.6051, 0.7361, 0.7029),
    ("Mask R-CNN", 0.7331, 0.6771, 0.7829, 0.7483),
    ("Ours", 0.8251, 0.8592, 0.9564, 0.8732),
)

REPORTED: list[Reported] = [
    Reported("Table 1", m, metric, v, note=_T1_NOTE)
    for m, dsc, auc, f1, jsc in _TABLE1
    for metric, v in (("dsc", dsc), ("auc", auc), ("f1", f1), ("jaccard", jsc))
]

CITED: list[Reported] = []

CLAIMS: list[Claim] = []
