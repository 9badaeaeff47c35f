"""Tissue classes and what each scanner sees in them.

Every voxel of a phantom is a partial-volume mix of the tissue classes below; each modality maps a
class to a value. The numbers are literature-typical, rounded, and chosen for the contrasts the five
papers rely on or complain about:

* CT (HU): tumour 50 vs muscle 45 and mucosa 45, a few HU apart under ~12 HU noise: the low
  soft-tissue contrast xue2020 discusses. Bone and air are trivial. This is the non-contrast CT.
* CECT (HU): the same CT after intravenous iodinated contrast, venous phase (taken as about 60-70 s
  after the injection starts, a typical venous timing; assumed, xue2020 does not give its timing).
  xue2020 trained on a contrast-enhanced simulation CT (Sec. 1.1, "CT 增强定位扫描"). Same noise and
  clipping as CT. See "CECT values and sources" below.
* T1: tumour only slightly brighter than muscle (iso- to hyperintense), fat and fatty marrow bright,
  so skull-base invasion shows as lost marrow signal.
* T2: tumour intermediate, 1.5 x muscle and darker than mucosa, adenoid (lymphoid tissue) and nodes:
  330 (earlier 570) so that its contrast against the ring around it matches the real NPC T2 slices
  (measured on ``../shared/data``: |core - ring| / ring sd, median 0.22, IQR 0.15-0.36; the phantom's
  cpu cohort 0.33, against 1.37 at 570).
* CET1 (fat-suppressed, post-gadolinium): tumour enhances strongly against muscle; mucosa enhances
  as much.
* DCE: spoiled-gradient-echo signal from ``M0`` and the pre-contrast ``T10`` with extended-Tofts
  kinetics (``Ktrans`` /min, ``ve``, ``vp``); ``vessel`` is whole blood and follows the arterial input.

MRI values are in arbitrary units (muscle ~300); each patient gets a random receiver gain.

CECT values and sources
-----------------------
Rounded, typical values (HU), as ``CT -> CECT`` (enhancement). Only the sources named
here were read, and each supports only what is said next to it; every number marked *assumed* is this
project's choice, consistent with the qualitative statements but not taken from a source.

* Blood (``vessel``: carotids, jugulars) 45 -> 165 (+120). Venous-phase blood-pool enhancement of about
  +120 HU: "MDCT of the Liver and Hypervascular Hepatocellular Carcinomas: Optimizing Scan Delays for
  Bolus-Tracking Techniques of Hepatic Arterial and Portal Venous Phases" (abstract at
  https://www.scilit.net/publications/1b69dc8767095a7e33aa1436ee32861d) reports the aorta's increase
  over unenhanced CT as 117-125 HU at 45-55 s after the bolus-tracking trigger (its portal venous
  phase). The neck's vessels are taken to hold the same blood (assumed).
* Muscle 45 -> 52 (+7), slight. Venous/portal-venous-phase skeletal muscle is about 6-8 HU denser than
  unenhanced: van Vugt et al., "Contrast-enhancement influences skeletal muscle density, but not
  skeletal muscle mass, measurements on computed tomography" (abstract at
  https://research.tudelft.nl/en/publications/contrast-enhancement-influences-skeletal-muscle-density-but-not-s:
  30.9 HU unenhanced vs 38.7 HU portal-venous at L3); "Correcting posterior paraspinal muscle computed
  tomography density for intravenous contrast material independent of sex and vascular phase"
  (abstract at discovery.researcher.life: +6.4 HU, SD 8.1, venous phase); van der Werf et al.,
  "Skeletal muscle analyses: agreement between non-contrast and contrast CT scan measurements of
  skeletal muscle area and mean muscle attenuation" (abstract at research.vumc.nl: a difference of
  6.7 +- 3.2 HU between contrast and non-contrast scans at the same tube voltage). These are trunk
  muscles; the neck's muscles are taken to behave alike (assumed).
* Tumour 50 -> 85 (+35), moderate; metastatic nodes (``nodemet``) 49 -> 84, like the tumour: assumed
  (no peer-reviewed source read here gives NPC's attenuation in HU). Consistent with the
  dual-energy CT study under "Adenoid" below, which found more iodine uptake in T1 NPC than in lymphoid
  hyperplasia; the tumour's larger texture spread in CECT than in CT (:data:`TUMOUR_TEXTURE`) stands for
  its heterogeneous enhancement.
* Normal nodes 42 -> 75 (+33), moderate: assumed. Qualitative support: healthy neck lymph nodes take
  up iodine in the portal-venous phase (mean iodine concentration 2.09 mg/mL, dual-energy CT):
  "Iodine concentration of healthy lymph nodes of neck, axilla, and groin in dual-energy computed
  tomography" (Acta Radiologica; DOI 10.1177/0284185120903448, from the address of the copy read).
  The source gives iodine concentrations, not HU.
* Adenoid (lymphoid tissue) 47 -> 75 (+28): assumed, below the tumour. Qualitative support: "Dual-energy
  CT in the differentiation of stage T1 nasopharyngeal carcinoma and lymphoid hyperplasia" (abstract
  at discovery.researcher.life) found a higher iodine concentration and higher 50-110 keV attenuation
  in T1 NPC than in lymphoid hyperplasia.
* Mucosa 45 -> 100 (+55), strong: assumed (a neck CT is timed so that mucosa, nodes and tumour enhance
  while the vessels stay opacified).
* Bone marrow (cancellous bone) 400 -> 420 (+20): assumed. Qualitative support: Boutin et al.,
  "Influence of IV contrast administration on CT measures of muscle and bone attenuation" (2016;
  abstract at ucdavis.pure.elsevier.com): the L4 vertebral body enhances significantly, most in the
  portal phase.
* Assumed, no source: gland (parotid, submandibular) 10 -> 40 (+30); brain and neural tissue 35 -> 40
  (+5: intact blood-brain barrier, only the blood volume enhances); fatty connective tissue -30 -> -25.
  Unchanged: fat, air, cortical bone, CSF, vitreous.

Per patient, CECT takes the CT values with their +-1 HU jitter and scales every tissue's enhancement by
one bolus factor (1 +- 0.1, clipped at 2.5 sd; assumed: injection and circulation differ between
patients), see :func:`npcrepro.phantom.scanners.draw_contrast`. Designed effect: the tumour-muscle
difference grows from 5 HU (CT) to 33 HU (CECT) against the same 12 HU noise.
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
    cect: float    # HU, contrast-enhanced CT, venous phase (see "CECT values and sources")


#: Tissue classes; the index in this dict is the class id of the tissue map (0 = outside the body).
TISSUES: dict[str, Tissue] = {
    "outside": Tissue(-1000, 0, 0, 0, 0.0, 1.0, 0, 0, 0, -1000),
    "soft":    Tissue(-30, 620, 480, 230, 0.85, 0.45, 0.03, 0.15, 0.01, -25),   # fatty connective tissue
    "fat":     Tissue(-100, 900, 700, 120, 0.90, 0.28, 0.01, 0.10, 0.005, -100),
    "muscle":  Tissue(45, 300, 220, 330, 0.70, 0.90, 0.06, 0.12, 0.02, 52),
    "brain":   Tissue(35, 450, 480, 430, 0.75, 0.95, 0.0, 0.0, 0.03, 40),
    "csf":     Tissue(8, 120, 1000, 110, 1.00, 4.00, 0.0, 0.0, 0.0, 8),
    "cortex":  Tissue(1200, 30, 20, 30, 0.05, 1.00, 0.0, 0.0, 0.0, 1200),
    "marrow":  Tissue(400, 660, 420, 280, 0.70, 0.55, 0.05, 0.15, 0.03, 420),
    "air":     Tissue(-1000, 0, 0, 0, 0.0, 1.0, 0, 0, 0, -1000),
    "mucosa":  Tissue(45, 350, 590, 800, 0.85, 1.00, 0.50, 0.30, 0.08, 100),
    "adenoid": Tissue(47, 340, 580, 720, 0.85, 1.05, 0.35, 0.30, 0.06, 75),
    "gland":   Tissue(10, 600, 520, 470, 0.80, 0.70, 0.12, 0.30, 0.03, 40),
    "vitreous": Tissue(10, 110, 1000, 110, 1.00, 4.00, 0.0, 0.0, 0.0, 10),
    "neural":  Tissue(35, 470, 420, 450, 0.75, 0.80, 0.0, 0.0, 0.03, 40),
    "vessel":  Tissue(45, 40, 40, 850, 0.85, 1.40, 0.0, 0.0, 1.0, 165),
    "node":    Tissue(42, 310, 500, 600, 0.80, 1.00, 0.15, 0.20, 0.04, 75),
    "nodemet": Tissue(49, 340, 565, 740, 0.80, 1.10, 0.20, 0.47, 0.01, 84),
    "tumour":  Tissue(50, 345, 330, 760, 0.80, 1.10, 0.20, 0.47, 0.01, 85),
    # necrosis inside an advanced tumour: fluid-like (bright on T2, dark on T1), not enhancing on CET1
    # or CECT, hardly perfused (assumed, rounded; qualitative: a non-enhancing core of necrotic NPC)
    "necrosis": Tissue(28, 240, 720, 200, 0.90, 2.00, 0.005, 0.20, 0.0, 30),
}

CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}

#: Per-modality standard deviation of the tumour's internal texture (value units; CT in HU): a smooth
#: field of unit root mean square (:data:`~npcrepro.phantom.lesions.TEXTURE_WAVELENGTH_MM`) times this.
#: Measured, not assumed, for T2: on the real NPC T2 slices of ``../shared/data`` (the data chapter's
#: "Against real scans", 25 slices), a tumour's core varies with 0.82 (median; IQR 0.66-0.94) of the standard
#: deviation of the 1-4.5 mm ring around it (:func:`npcrepro.phantom.measure.ring_contrast`); a T2
#: texture of 150 gives the phantom's cpu cohort 0.74 (the earlier 30: 0.08). T1 and CET1 take the
#: same factor over their earlier values (assumed: no real T1 or CET1 extract to measure; CET1's
#: large spread is the heterogeneous, partial enhancement of the clinic). CT and CECT are unchanged:
#: their 12 HU noise already hides the tumour (no real CT with a GTV to measure).
TUMOUR_TEXTURE = {"CT": 3.0, "T1": 60.0, "T2": 150.0, "CET1": 225.0, "CECT": 6.0}

#: The sequences a rater reads side by side to contour the tumour (:mod:`npcrepro.phantom.raters`).
MRI_READING = ("T1", "T2", "CET1")
