"""xue2020 -- Xue et al., DeepLabv3+ for the primary-tumour GTV (GTVp) of NPC on planning CT.

Source: ``shared/papers/xue2020_deeplabv3plus_ct.txt`` (Chinese, English abstract; Journal of
Image and Graphics 25(10):2151-2158, 2020).

Results (Sec. 2 and the English abstract): mean ± SD over the 15 test patients for DeepLabv3+
and U-Net, paired t-test p-values (SPSS 23.0), time per CT slice and training time. The paper
calls its surface metric ASD, defined as the mean of the two directed average surface distances
(Eq. 3) -- the symmetric average surface distance, stored as ``assd``. p-values are stored with
method ``"DeepLabv3+ vs U-Net"``; :data:`P_VALUES` maps each compared metric to its record.
"""
from __future__ import annotations

from npcrepro.papers import Claim, PaperInfo, Reported, entry

KEY = "xue2020"

DEEPLAB = "DeepLabv3+"
UNET = "U-Net"
PAIR = "DeepLabv3+ vs U-Net"

INFO = PaperInfo(
    key=KEY,
    short_title="DeepLabv3+ for NPC GTVp on planning CT",
    title=(
        "Auto-segmentation of high-risk primary tumor gross target volume for the radiotherapy of "
        "nasopharyngeal carcinoma"
    ),
    citation=(
        "Xue X D, Hao X Y, Shi J, Ding Y, Wei W and An H. 2020. Auto-segmentation of high-risk primary "
        "tumor gross target volume for the radiotherapy of nasopharyngeal carcinoma. Journal of Image "
        "and Graphics 25(10):2151-2158. DOI: 10.11834/jig.200243"
    ),
    journal="Journal of Image and Graphics (中国图象图形学报)",
    year=2020,
    doi="10.11834/jig.200243",
    arxiv=None,
    modality="CT (planning CT)",
    task="NPC primary tumour GTV (GTVp, incl. retropharyngeal nodes) segmentation, 2D slices",
    dataset={
        "n_patients": 150,
        "image_size": (512, 512),
        "spacing_mm": (3.0, 0.98, 0.98),
        "summary": (
            "150 NPC patients treated with IMRT, Anhui Provincial Hospital, 2016-2019 (abstract: Jan "
            "2016 - May 2019); Siemens Somatom Definition AS 40 contrast CT, 512x512, 0.98x0.98 mm, "
            "3 mm slices (Sec. 1.1; the English abstract says 2.5 mm); contrast T1 MRI registered for "
            "contouring; GTVp contoured in Pinnacle by the attending physician, approved by a senior "
            "physician; GTVp includes the retropharyngeal nodes. Table 1 demographics: DEMOGRAPHICS."
        ),
        "spacing_note": "slice thickness 3 mm in Sec. 1.1 vs 2.5 mm in the English abstract",
    },
    protocol={
        "scheme": "single random split",
        "train_patients": 120,
        "val_patients": 15,
        "test_patients": 15,
        "statistics": "paired t-test between models on the 15 test patients, p < 0.05 significant, SPSS 23.0",
        "source": "Sec. 1.3, Sec. 1.5",
    },
    recipe={
        "optimizer": entry("Adam", "Sec. 1.3"),
        "lr": entry(0.005, "Sec. 1.3"),
        "momentum": entry(None, "", "not stated"),
        "weight_decay": entry(
            None, "",
            "not stated; the English abstract's 'weight decay factor is 0.8' is the learning-rate decay "
            "factor of Sec. 1.3",
        ),
        "schedule": entry(
            "lr x 0.8 when the training metric has not improved for 5 consecutive evaluations",
            "Sec. 1.3",
        ),
        "batch_size": entry(8, "Sec. 1.3"),
        "epochs": entry(200, "Sec. 1.3"),
        "loss": entry("1 - DSC", "Sec. 1.3"),
        "augmentation": entry("flips, random rotation, zoom (scaling), translation", "Sec. 1.3"),
        "input_size": entry((512, 512), "English abstract", "'resized to 512x512 for training'"),
        "input": entry("one CT image (2D)", "English abstract",
                       "'the average time required to segment a CT image'; the networks read one slice"),
        "image": entry("CECT", "Sec. 1.1",
                       "contrast-enhanced simulation (planning) CT, 'CT 增强定位扫描', Siemens Somatom "
                       "Definition AS 40; contrast T1 MRI was registered for contouring only"),
        "preprocessing": entry(None, "", "no intensity windowing/normalisation stated"),
        "framework": entry("Keras", "Sec. 1.3"),
        "hardware": entry("Intel Xeon E5-2695, NVIDIA Tesla P40", "Sec. 1.3"),
    },
    architecture=(
        "DeepLabv3+ (encoder-decoder + ASPP) with an improved MobileNetV2 backbone (4 kinds of inverted "
        "residual blocks, output channels 24-320, atrous depthwise-separable convs); decoder: x4 "
        "bilinear upsampling, concat with 1x1-reduced low-level features, 3x3 convs, x4 upsampling "
        "(Sec. 1.2). Baseline: U-Net."
    ),
    notes=(
        "Slice thickness 3 mm (Sec. 1.1) vs 2.5 mm (English abstract).",
        "'Improved DSC and JI by 3%-4%' are absolute differences (0.76-0.73, 0.63-0.59) (see CLAIMS).",
        "About 35.3% of patients (locally advanced) had induction chemotherapy then concurrent "
        "chemoradiotherapy (Sec. 1.1, Table 1).",
        "Box plots (Fig. 3) print no numbers: box 25-75th percentile, whiskers 10-90th.",
    ),
)

HEADLINE = ("Sec. 2", DEEPLAB, ("dsc", "jaccard", "assd", "hd"))

METHOD_ALIASES = {"Deeplabv3+": DEEPLAB, "DeepLab": DEEPLAB, "Ours": DEEPLAB, "UNet": UNET}

_N15 = "mean ± SD over the 15 test patients (Sec. 2 and English abstract)"

REPORTED: list[Reported] = [
    Reported("Sec. 2", DEEPLAB, "dsc", 0.76, sd=0.11, note=_N15),
    Reported("Sec. 2", DEEPLAB, "jaccard", 0.63, sd=0.13, note=_N15 + "; paper: JI"),
    Reported("Sec. 2", DEEPLAB, "assd", 3.4, sd=2.0, unit="mm", note=_N15 + "; paper: ASD (Eq. 3)"),
    Reported("Sec. 2", DEEPLAB, "hd", 10.9, sd=8.6, unit="mm", note=_N15),
    Reported("Sec. 2", UNET, "dsc", 0.73, sd=0.13, note=_N15),
    Reported("Sec. 2", UNET, "jaccard", 0.59, sd=0.14, note=_N15 + "; paper: JI"),
    Reported("Sec. 2", UNET, "assd", 3.8, sd=3.3, unit="mm", note=_N15 + "; paper: ASD (Eq. 3)"),
    Reported("Sec. 2", UNET, "hd", 11.1, sd=7.5, unit="mm", note=_N15),
    Reported("Sec. 2", DEEPLAB, "ms_per_slice", 16, unit="ms", note="average time to segment one CT image"),
    Reported("Sec. 2", UNET, "ms_per_slice", 14, unit="ms", note="average time to segment one CT image"),
    Reported("Sec. 2", DEEPLAB, "train_hours", 6.7, unit="h", note="200 epochs, Tesla P40"),
    Reported("Sec. 2", UNET, "train_hours", 5, unit="h", note="200 epochs, Tesla P40"),
]

#: Paired t-test p-values (Sec. 2, abstract): compared metric -> record ("p < 0.001" is stored as
#: value 0.001 with ``high=0.001``).
P_VALUES: dict[str, Reported] = {
    "dsc": Reported("Sec. 2", PAIR, "p_value", 0.001, high=0.001,
                    note="paired t-test on dsc; printed 'p < 0.001' (an upper bound)"),
    "jaccard": Reported("Sec. 2", PAIR, "p_value", 0.001, high=0.001,
                        note="paired t-test on jaccard; printed 'p < 0.001' (an upper bound)"),
    "assd": Reported("Sec. 2", PAIR, "p_value", 0.014, note="paired t-test on assd"),
    "hd": Reported("Sec. 2", PAIR, "p_value", 0.745, note="paired t-test on hd (no significant difference)"),
}
REPORTED += list(P_VALUES.values())

#: Table 1 (demographics of the 150 patients): category -> (count, percent as printed).
DEMOGRAPHICS: dict[str, object] = {
    "n_patients": 150,
    "source": "Table 1",
    "sex": {"male": (112, 74.7), "female": (38, 25.3)},
    "age_years": {"median": 52, "range": (22.0, 80.0)},
    "t_stage": {"T1": (11, 7.3), "T2": (23, 15.3), "T3": (79, 52.7), "T4": (37, 24.7)},
    "n_stage": {"N0": (8, 5.3), "N1": (41, 27.3), "N2": (84, 56.0), "N3": (17, 11.3)},
    "treatment": {
        "induction chemotherapy + concurrent chemoradiotherapy": (53, 35.3),
        "radiotherapy alone or concurrent chemoradiotherapy": (97, 64.7),
    },
}

#: Numbers the Discussion (Sec. 3) quotes from other work; DSC given in percent are stored as fractions.
CITED: list[Reported] = [
    Reported("Sec. 3 (cited)", "CNN, head-and-neck OARs on CT (Ibragimov and Xing 2017)", "dsc", 0.374,
             low=0.374, high=0.895, note="range over organs, printed '37.4% 到 89.5%'; value = lower end",
             printed=("37.4%", "89.5%")),
    Reported("Sec. 3 (cited)", "AnatomyNet, head-and-neck OARs (Zhu et al. 2019)", "dsc", 0.788,
             note="mean, printed '78.8%'", printed=("78.8%",)),
    Reported("Sec. 3 (cited)", "Locate-then-segment, eyes and surrounding organs on CT (Sun et al. 2019)",
             "dsc", 0.822, low=0.822, high=0.94, note="range, printed '82.2% ~ 94%'; value = lower end",
             printed=("82.2%", "94%")),
    Reported("Sec. 3 (cited)", "3D CNN, GTVp on MRI (Lin et al. 2019)", "dsc", 0.79, printed=("0.79",)),
    Reported("Sec. 3 (cited)", "CNN + 3D graph cut, MRI (Ma et al. 2018)", "dsc", 0.851,
             note="printed '85.1%'", printed=("85.1%",)),
]

_S = "Sec. 2"
CLAIMS: list[Claim] = [
    Claim("Sec. 2 / abstract", "DSC improved by 3% (3%-4%) over U-Net", "dsc", 0.03,
          (_S, DEEPLAB), (_S, UNET), tolerance=0.01, printed=("3%",)),
    Claim("Sec. 2 / abstract", "JI improved by 4% (3%-4%) over U-Net", "jaccard", 0.04,
          (_S, DEEPLAB), (_S, UNET), tolerance=0.01, printed=("4%",)),
    Claim("Chinese abstract", "mean ASD reduced by 0.4 mm", "assd", 0.4,
          (_S, DEEPLAB), (_S, UNET), tolerance=0.05, printed=("0.4 mm",)),
]
