"""li2018 -- Li et al., CNN for NPC tumour segmentation on contrast-enhanced (DCE) MRI.

Source: ``shared/papers/li2018_cnn_cemri.txt`` (BioMed Research International, 2018).

Recall/precision swap (verified). The paper's Eq. (1) defines ``recall = TP/(TP+FP)`` and Eq. (2)
``precision = TP/(TP+FN)`` -- the usual names swapped. Its Table 2 "Recall" column is therefore
TP/(TP+FP), i.e. *precision*, and "Percent match" PM = TP/(TP+FN) (Eq. 5) is the usual recall.
Check on Table 2: with PM as TP/(TP+FN) and the "Recall" column as TP/(TP+FP), every patient's
DSC (harmonic mean), JSC = 1/(1/PM + 1/col - 1) and CR = PM - PM(1/col - 1)/2 (Eq. 4) are
reproduced to within 0.01 (rounding of the two-decimal table); with the opposite reading CR is off
by up to 0.05. The column is stored here under metric ``precision``.
"""
from __future__ import annotations

from npcrepro.papers import Claim, PaperInfo, Reported, entry

KEY = "li2018"

INFO = PaperInfo(
    key=KEY,
    short_title="CNN for NPC segmentation on CE-MRI",
    title=(
        "Tumor Segmentation in Contrast-Enhanced Magnetic Resonance Imaging for Nasopharyngeal "
        "Carcinoma: Deep Learning with Convolutional Neural Network"
    ),
    citation=(
        "Li Q, Xu Y, Chen Z, et al. Tumor segmentation in contrast-enhanced magnetic resonance "
        "imaging for nasopharyngeal carcinoma: deep learning with convolutional neural network. "
        "BioMed Research International, 2018, article 9128527."
    ),
    journal="BioMed Research International",
    year=2018,
    doi=None,
    arxiv=None,
    modality="MRI (DCE-MRI, 3.0 T; the 35th dynamic scan, i.e. contrast-enhanced T1)",
    task="NPC primary tumour segmentation, 2D slices",
    dataset={
        "n_patients": 29,
        "n_slices": 87,
        "image_size": (144, 144, 20, 65),
        "spacing_mm": None,
        "summary": (
            "29 newly diagnosed NPC patients (First Affiliated Hospital, Sun Yat-Sen University, "
            "Aug 2010 - Apr 2013), Siemens Magnetom Trio 3.0 T; FOV 22x22x6 cm (AP x RL x FH), "
            "matrix 144x144x20 x 65 dynamic frames; frame 35 (peak enhancement) used; only slices "
            "containing tumour: 87 slices in total; lesions/nodes < 1 cm excluded; ground truth by "
            "consensus of two radiologists in ImageJ (Sec. 2.1)."
        ),
        "spacing_note": (
            "not stated; FOV/matrix gives about 1.53 mm in-plane and 3 mm between slices (derived, "
            "not printed)"
        ),
    },
    protocol={
        "scheme": "leave-one-patient-out cross-validation (LOOCV)",
        "n_folds": 29,
        "train_patients": 28,
        "test_patients": 1,
        "unit_of_evaluation": "patient (metrics computed per patient, not per lesion)",
        "source": "Sec. 2.4, Sec. 3",
    },
    recipe={
        "optimizer": entry(
            None, "Sec. 2.3",
            "not named; the stated solver parameters (base lr, step size, gamma, momentum, weight "
            "decay) are those of SGD with momentum and a step policy -- an inference, not stated",
        ),
        "lr": entry(1e-7, "Sec. 2.3", "'basic learning rate: 1x10-7'"),
        "momentum": entry(0.9, "Sec. 2.3"),
        "weight_decay": entry(
            5e-4, "Sec. 2.3",
            "printed '5x104' (exponent sign lost in the extraction); read as 5x10^-4",
        ),
        "schedule": entry("step: lr x 0.1 (gamma) every 1e5 iterations (step size)", "Sec. 2.3"),
        "batch_size": entry(None, "", "not stated"),
        "iterations": entry(None, "", "not stated; a complete training took 52 h on a GTX 980"),
        "loss": entry(None, "", "not stated"),
        "init": entry("Gaussian, mean 0, standard deviation 1", "Sec. 2.3"),
        "training_scheme": entry(
            "stepwise: (1) feature-representation part to the 36x36 score map; (2) add Deconv1, "
            "Concat1, Conv7 for a 72x72 map; (3) add Deconv2, Concat2, Conv8 for 144x144",
            "Sec. 2.3",
        ),
        "augmentation": entry(
            "rotation -10..10 deg step 2 (x11); contrast adjustment with MATLAB imadjust (x33); "
            "Gaussian noise of power 1e-8 (x2): x726 per slice, 87 -> 63126 slices",
            "Sec. 2.1",
        ),
        "input_size": entry((144, 144), "Sec. 2.2, Table 1"),
        "preprocessing": entry(
            "Z-score normalisation per image (text: 'normalized by the mean intensity of this image')",
            "Sec. 2.1",
        ),
        "exclusion": entry(
            10.0, "Sec. 2.1",
            "'patients with lymph nodes or lesions smaller than 1 cm were excluded' (partial volume); "
            "value in mm; how the size was measured is not stated",
        ),
        "hardware": entry("NVIDIA GeForce GTX 980, Intel Core i7 3.5 GHz", "Sec. 2.3"),
    },
    architecture=(
        "Table 1: Conv1 5x5/80 -> Pool 2 -> Conv2 5x5/120 -> Pool 2 -> Conv3 9x9/500 -> Conv4 1x1/300 "
        "-> Conv5 3x3/100 -> Conv6 3x3/1 (36x36) -> Deconv1 4x4 s2 -> Concat1 with Conv2 output "
        "(72x72x121) -> Conv7 1x1/1 -> Deconv2 4x4 s2 -> Concat2 with Conv1 output (144x144x81) -> "
        "Conv8 1x1/1; ReLU after Conv1-Conv7"
    ),
    notes=(
        "Eq. (1)/(2) swap recall and precision; the Table 2 'Recall' column is TP/(TP+FP) and is "
        "stored as metric 'precision' (verified against DSC, JSC and CR, see module docstring).",
        "The Results text swaps the PM and CR ranges ('PM ... range of 0.71-0.92', 'CR ... range "
        "was 0.83-0.96'); Table 2 and Table 3 give PM 0.83-0.96 and CR 0.71-0.92, which are stored.",
        "Fig. 1 caption says 3 Conv-ReLu blocks, the text says 4 (C1-C4).",
        "The extracted text starts at the abstract: title, authors and article number (9128527, from "
        "the digest) are not in it; only the running head 'BioMed Research International' is. No DOI "
        "in the text.",
    ),
)

HEADLINE = ("Table 2", "CNN")

METHOD_ALIASES = {
    "SVM": "Support vector machine",
    "HMRF": "Hidden Markov random field",
    "DCNN": "Deep Convolutional Neural Networks",
    "Ours": "CNN",
}

_SWAP = "paper labels this column 'recall' (its Eq. swaps)"
_SUMMARY = "Table 2 'Mean±Std' row; the same mean±SD for DSC, CR, PM in Table 3 and the abstract"

# Table 2, per patient: (DL volume cm3, readers' volume cm3, PM, CR, DSC, 'Recall' column, JSC)
_TABLE2 = (
    (7.8, 8.0, 0.84, 0.74, 0.83, 0.81, 0.70),
    (5.2, 6.2, 0.90, 0.76, 0.82, 0.75, 0.70),
    (5.1, 6.4, 0.89, 0.72, 0.80, 0.72, 0.66),
    (18.5, 18.4, 0.88, 0.83, 0.89, 0.89, 0.79),
    (7.0, 6.5, 0.86, 0.82, 0.89, 0.92, 0.80),
    (11.9, 10.6, 0.85, 0.82, 0.89, 0.94, 0.81),
    (11.9, 11.9, 0.83, 0.74, 0.83, 0.82, 0.71),
    (11.0, 10.2, 0.85, 0.82, 0.89, 0.92, 0.80),
    (5.9, 6.7, 0.90, 0.78, 0.84, 0.79, 0.73),
    (14.8, 17.1, 0.86, 0.71, 0.80, 0.75, 0.66),
    (4.4, 4.7, 0.96, 0.91, 0.93, 0.91, 0.87),
    (17.3, 17.9, 0.94, 0.89, 0.92, 0.90, 0.85),
    (4.5, 4.3, 0.88, 0.84, 0.90, 0.92, 0.82),
    (46.7, 45.0, 0.93, 0.91, 0.95, 0.97, 0.90),
    (5.8, 5.7, 0.88, 0.82, 0.88, 0.89, 0.79),
    (8.8, 9.2, 0.90, 0.83, 0.88, 0.87, 0.79),
    (5.7, 6.8, 0.92, 0.79, 0.84, 0.78, 0.73),
    (10.7, 11.2, 0.94, 0.89, 0.92, 0.90, 0.85),
    (10.6, 10.9, 0.95, 0.91, 0.94, 0.93, 0.88),
    (8.6, 8.9, 0.93, 0.88, 0.91, 0.90, 0.84),
    (13.3, 13.9, 0.93, 0.87, 0.91, 0.89, 0.83),
    (13.7, 13.6, 0.95, 0.92, 0.95, 0.95, 0.90),
    (6.3, 6.5, 0.90, 0.83, 0.88, 0.87, 0.79),
    (16.2, 16.5, 0.95, 0.92, 0.94, 0.94, 0.89),
    (18.2, 17.7, 0.94, 0.92, 0.95, 0.96, 0.91),
    (11.4, 11.1, 0.91, 0.87, 0.92, 0.93, 0.85),
    (10.8, 11.0, 0.88, 0.80, 0.87, 0.86, 0.76),
    (17.1, 17.9, 0.95, 0.90, 0.93, 0.91, 0.86),
    (12.0, 12.2, 0.94, 0.90, 0.93, 0.92, 0.87),
)


def _table2() -> list[Reported]:
    out: list[Reported] = []
    for i, (vdl, vgt, pm, cr, dsc, col, jsc) in enumerate(_TABLE2, start=1):
        c = str(i)
        out += [
            Reported("Table 2", "CNN", "volume_cm3", vdl, unit="cm3", case=c, note="volume of current DL method"),
            Reported("Table 2", "Two readers", "volume_cm3", vgt, unit="cm3", case=c,
                     note="volume obtained by the two readers (ground truth)"),
            Reported("Table 2", "CNN", "percent_match", pm, case=c),
            Reported("Table 2", "CNN", "corresponding_ratio", cr, case=c),
            Reported("Table 2", "CNN", "dsc", dsc, case=c),
            Reported("Table 2", "CNN", "precision", col, case=c, note=_SWAP),
            Reported("Table 2", "CNN", "jaccard", jsc, case=c),
        ]
    return out


REPORTED: list[Reported] = [
    # summary row (Table 2 Mean±Std; ranges from Table 3)
    Reported("Table 2", "CNN", "dsc", 0.89, sd=0.05, low=0.80, high=0.95, note=_SUMMARY + "; range from Table 3 and Sec. 3"),
    Reported("Table 2", "CNN", "percent_match", 0.90, sd=0.04, low=0.83, high=0.96,
             note=_SUMMARY + "; range from Table 3 (Sec. 3 text prints 0.71-0.92, swapped with CR)"),
    Reported("Table 2", "CNN", "corresponding_ratio", 0.84, sd=0.06, low=0.71, high=0.92,
             note=_SUMMARY + "; range from Table 3 (Sec. 3 text prints 0.83-0.96, swapped with PM)"),
    Reported("Table 2", "CNN", "precision", 0.88, sd=0.07, note="Table 2 'Mean±Std' row; " + _SWAP),
    Reported("Table 2", "CNN", "jaccard", 0.81, sd=0.07, note="Table 2 'Mean±Std' row"),
    *_table2(),
    # Table 3: published results of other models (N.A. entries omitted)
    Reported("Table 3", "Support vector machine", "corresponding_ratio", 0.72, sd=0.06, low=0.58, high=0.85,
             note="Zhou et al. [7]"),
    Reported("Table 3", "Support vector machine", "percent_match", 0.79, sd=0.07, low=0.65, high=0.91,
             note="Zhou et al. [7]"),
    Reported("Table 3", "Hidden Markov random field", "corresponding_ratio", 0.72, low=0.44, high=0.91,
             note="Huang et al. [14]; no SD printed"),
    Reported("Table 3", "Hidden Markov random field", "percent_match", 0.85, low=0.64, high=1.00,
             note="Huang et al. [14]; no SD printed"),
    Reported("Table 3", "Deep Convolutional Neural Networks", "dsc", 0.80,
             note="Wang et al. [15]; Mean N.A., Range column prints '-0.80' (presumably '~0.80')",
             printed=("-0.80",)),
    Reported("Table 3", "Deep Convolutional Neural Networks", "percent_match", 0.90,
             note="Wang et al. [15]; Mean N.A., Range column prints '-0.90' (presumably '~0.90')",
             printed=("-0.90",)),
    # Figures 2 and 3: single examples
    Reported("Figure 2", "CNN", "dsc", 0.941, case="high accuracy example", note="one slice"),
    Reported("Figure 2", "CNN", "corresponding_ratio", 0.915, case="high accuracy example", note="one slice"),
    Reported("Figure 2", "CNN", "percent_match", 0.950, case="high accuracy example", note="one slice"),
    Reported("Figure 3", "CNN", "dsc", 0.797, case="less accurate example", note="one slice"),
    Reported("Figure 3", "CNN", "corresponding_ratio", 0.731, case="less accurate example", note="one slice"),
    Reported("Figure 3", "CNN", "percent_match", 0.937, case="less accurate example", note="one slice"),
    # training cost
    Reported("Sec. 2.3", "CNN", "train_hours", 52, unit="h",
             note="a complete (stepwise) training on one NVIDIA GeForce GTX 980"),
]

CITED: list[Reported] = [
    Reported("Sec. 1 (cited)", "Semi-Fuzzy C-means", "percent_match", 0.87,
             note="Zhou et al. [6]: 'PM values close to 0.87'"),
    Reported("Sec. 1 (cited)", "Spectral clustering", "precision", 0.71,
             note="Huang et al. [8]: 'positive predictive value up to 0.71'"),
    Reported("Sec. 1 (cited)", "Deep Convolutional Neural Networks", "jaccard", 0.8, high=0.8,
             note="Wang et al. [15]: 'average JSC value was less than 0.8' (an upper bound)",
             printed=("less than 0.8",)),
]

#: The text's derived claims (none are differences between its own rows).
CLAIMS: list[Claim] = []
