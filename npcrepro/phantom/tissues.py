"""Tissue classes and what each scanner sees in them.

Every voxel of a phantom is a partial-volume mix of the tissue classes below; each modality maps a
class to a value. The numbers are literature-typical, rounded, and chosen for the contrasts the five
papers rely on or complain about:

* CT (HU): tumour 50 vs muscle 45 and mucosa 45, a few HU apart under ~12 HU noise: the low
  soft-tissue contrast xue2020 discusses. Bone and air are trivial.
* T1: tumour only slightly brighter than muscle (iso- to hyperintense), fat and fatty marrow bright,
  so skull-base invasion shows as lost marrow signal.
* T2: tumour bright against muscle, but mucosa, adenoid (lymphoid tissue) and nodes are as bright.
* CET1 (fat-suppressed, post-gadolinium): tumour enhances strongly against muscle; mucosa enhances
  as much.
* DCE: spoiled-gradient-echo signal from ``M0`` and the pre-contrast ``T10`` with extended-Tofts
  kinetics (``Ktrans`` /min, ``ve``, ``vp``); ``vessel`` is whole blood and follows the arterial input.

MRI values are in arbitrary units (muscle ~300); each patient gets a random receiver gain.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tissue:
    ct: float      # HU
    t1: float      # a.u.
    t2: float      # a.u.
    cet1: float    # a.u., fat-suppressed post-contrast T1
    m0: float      # relative proton density (DCE)
    t10: float     # pre-contrast T1 relaxation time, s (DCE)
    ktrans: float  # /min
    ve: float      # extravascular extracellular volume fraction
    vp: float      # plasma volume fraction


#: Tissue classes; the index in this dict is the class id of the tissue map (0 = outside the body).
TISSUES: dict[str, Tissue] = {
    "outside": Tissue(-1000, 0, 0, 0, 0.0, 1.0, 0, 0, 0),
    "soft":    Tissue(-30, 620, 480, 230, 0.85, 0.45, 0.03, 0.15, 0.01),   # fatty connective tissue
    "fat":     Tissue(-100, 900, 700, 120, 0.90, 0.28, 0.01, 0.10, 0.005),
    "muscle":  Tissue(45, 300, 220, 330, 0.70, 0.90, 0.06, 0.12, 0.02),
    "brain":   Tissue(35, 450, 480, 430, 0.75, 0.95, 0.0, 0.0, 0.03),
    "csf":     Tissue(8, 120, 1000, 110, 1.00, 4.00, 0.0, 0.0, 0.0),
    "cortex":  Tissue(1200, 30, 20, 30, 0.05, 1.00, 0.0, 0.0, 0.0),
    "marrow":  Tissue(400, 660, 420, 280, 0.70, 0.55, 0.05, 0.15, 0.03),
    "air":     Tissue(-1000, 0, 0, 0, 0.0, 1.0, 0, 0, 0),
    "mucosa":  Tissue(45, 350, 590, 800, 0.85, 1.00, 0.50, 0.30, 0.08),
    "adenoid": Tissue(47, 340, 580, 720, 0.85, 1.05, 0.35, 0.30, 0.06),
    "gland":   Tissue(10, 600, 520, 470, 0.80, 0.70, 0.12, 0.30, 0.03),
    "vitreous": Tissue(10, 110, 1000, 110, 1.00, 4.00, 0.0, 0.0, 0.0),
    "neural":  Tissue(35, 470, 420, 450, 0.75, 0.80, 0.0, 0.0, 0.03),
    "vessel":  Tissue(45, 40, 40, 850, 0.85, 1.40, 0.0, 0.0, 1.0),
    "node":    Tissue(42, 310, 500, 600, 0.80, 1.00, 0.15, 0.20, 0.04),
    "nodemet": Tissue(49, 340, 565, 740, 0.80, 1.10, 0.20, 0.47, 0.01),
    "tumour":  Tissue(50, 345, 570, 760, 0.80, 1.10, 0.20, 0.47, 0.01),
}

CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}

#: Per-modality spread of the tumour's internal texture (value units); CT in HU.
TUMOUR_TEXTURE = {"CT": 3.0, "T1": 12.0, "T2": 30.0, "CET1": 45.0}
