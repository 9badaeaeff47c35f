"""Lesions: the primary tumour (GTVp) with its T stage, nodal disease (GTVnd) with its N stage, and
CTV-style expansions.

Primary tumour. NPC starts in the lateral wall of the nasopharynx, usually the fossa of
Rosenmüller. The phantom grows it along a path of way-points from the fossa (on a random side) into
the compartments its stage allows (AJCC 8th edition, simplified):

* T1: nasopharynx, may extend to the oropharynx or nasal cavity (the mucosa and the pharyngeal wall);
* T2: parapharyngeal space (fat), medial pterygoid or prevertebral muscles;
* T3: bone of the skull base (clivus, sphenoid, pterygoid plates) or the cervical vertebrae;
* T4: intracranial extension (into the middle cranial fossa / cavernous sinus region).

Spheres of varying radius are placed along the path plus a few satellite lobules, blended (smooth
union), and the surface is deformed by smooth noise: an irregular, lobulated lesion, never an
ellipsoid. Compartments a stage must not reach are cut away (a T2 tumour pushes against the skull
base but does not enter it), organs at risk are never entered (brainstem, cord, eyes, optic
apparatus) and the carotid and jugular vessels are spared. The blob radii are scaled to hit a volume
drawn from the stage's range, the realised invasion is measured on a 1.5 mm grid in patient space,
and the draw is repeated until the stage is what it should be and the lesion spans at least 1 cm
(li2018 excluded smaller ones).

Volumes (cm3, log-uniform per stage; all within li2018's 4-47 cm3): T1 4-10, T2 7-18, T3 12-32,
T4 20-47. Stage frequencies when not given follow xue2020 Table 1 (T1-T4: 7, 15, 53, 25 %;
N0-N3: 5, 27, 56, 11 %).

Nodes (N stage, simplified): N1 unilateral level II and/or retropharyngeal nodes; N2 bilateral
nodes; N3 a bulky ipsilateral conglomerate reaching level III (the real criterion is > 6 cm or below
the cricoid). GTVnd is the union of the metastatic nodes.

Necrosis: a T3 or T4 tumour may carry a non-enhancing, fluid-like core (:func:`_necrosis`); it is
part of the GTVp, as a physician contours it.

CTVs: ``CTVp`` is GTVp grown by ``ctv_margin_mm`` inside the body and outside air (the GTVp itself
always included). ``CTVnd`` is an elective nodal CTV: both retropharyngeal regions and both level
II regions, plus every metastatic node grown by ``ctvnd_margin_mm``, inside the body and outside
air, bone and the spinal canal, so N0 patients have one too (luo2020 contours CTVnd on everyone).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npcrepro.phantom import sdf
from npcrepro.phantom.anatomy import SIDES, Anatomy
from npcrepro.phantom.render import Grid, Pose, View, evaluate
from npcrepro.phantom.sdf import (Capsule, Deform, Ellipsoid, Intersect, Noise, Offset, Sphere,
                                  Subtract, Tight, Union)

T_STAGES = (1, 2, 3, 4)
N_STAGES = (0, 1, 2, 3)
T_FREQ = np.array([11, 23, 79, 37], float) / 150  # xue2020 Table 1
N_FREQ = np.array([8, 41, 84, 17], float) / 150
VOLUME_RANGE_CM3 = {1: (4.0, 10.0), 2: (7.0, 18.0), 3: (12.0, 32.0), 4: (20.0, 47.0)}
MIN_EXTENT_MM = 10.0
CALIB_MM = 1.5
MIN_INVASION_CM3 = 0.15

# Way-points (canonical mm, x for the left side; mirrored for the right).
_FOSSA = (4.0, 4.0, 13.0)
_WAYPOINTS = {
    1: [(3, 9, 4), (10, 4, 7), (-6, 1, 12), (3, 9, -3), (-14, 4, 10)],
    2: [(-3, 2, 22), (2, 18, 9), (-14, 2, 23)],
    3: [(20, 16, 5), (13, -4, 22), (22, -2, 6), (-8, 27, 7)],
    4: [(28, 4, 21), (27, -8, 25)],
}


#: Chance of a necrotic core by T stage (assumed: necrosis is a feature of large, advanced primaries),
#: its radius range (mm) and the enhancing rim it leaves inside the tumour's edge (mm).
NECROSIS_P = {3: 0.25, 4: 0.4}
NECROSIS_RADIUS_MM = (4.0, 9.0)
NECROSIS_RIM_MM = 3.0

#: Wavelength (mm) of the tumour's internal texture: a field of unit root-mean-square that each
#: modality scales by its :data:`~npcrepro.phantom.tissues.TUMOUR_TEXTURE` (a standard deviation).
TEXTURE_WAVELENGTH_MM = 6.0


def unit_rms(noise: Noise) -> Noise:
    """``noise`` rescaled in place to a root-mean-square of 1 (a sum of sines of weights ``w`` has
    ``sum(w^2) / 2`` as its mean square)."""
    rms = float(np.sqrt(np.sum(noise.weights.astype(float) ** 2) / 2.0))
    noise.weights *= np.float32(1.0 / rms)
    noise.amplitude = float(np.abs(noise.weights).sum())
    return noise


@dataclass
class Lesions:
    t_stage: int
    n_stage: int
    side: str
    gtvp: sdf.Shape
    gtvnd: sdf.Shape | None
    ctvp: sdf.Shape
    ctvnd: sdf.Shape
    texture: Noise
    facts: dict = field(default_factory=dict)
    necrosis: sdf.Shape | None = None


def _calib_view(lo, hi) -> View:
    lo = np.floor(np.asarray(lo) / CALIB_MM) * CALIB_MM
    n = np.ceil((np.asarray(hi) - lo) / CALIB_MM).astype(int) + 1
    grid = Grid(tuple(int(v) for v in n), (CALIB_MM,) * 3, tuple(float(v) for v in lo))
    return View.whole(grid, Pose.identity())


def _stage_constraint(anat: Anatomy, stage: int) -> sdf.Shape:
    """Where a tumour of ``stage`` may be (negative inside): compartments of higher stages cut out."""
    S = anat.shapes
    keep_out = [Offset(S["Protected"], 1.0), Offset(S["Vessels"], 0.5)]
    if stage <= 3:
        keep_out.append(S["Intracranial"])
    if stage <= 2:
        keep_out.append(S["Bone"])
    parts: list[sdf.Shape] = [S["Body"]]
    if stage == 1:
        keep_out += [S["ParapharyngealFat"], S["Prevertebral"], S["MedialPterygoid"]]
        parts.append(Offset(S["PharyngealAirway"], 11.0))
    if stage <= 3:
        keep_out += [S["Parotid_L"], S["Parotid_R"]]
    return Subtract(Intersect(parts), keep_out)


def _draw_path(rng: np.random.Generator, stage: int, sx: float) -> list[np.ndarray]:
    mirror = np.array([1.0, 1.0, sx])
    pts = [np.asarray(_FOSSA) * mirror]
    t1 = rng.permutation(len(_WAYPOINTS[1]))[: rng.integers(1, 3)]
    pts += [np.asarray(_WAYPOINTS[1][i], float) * mirror for i in t1]
    for level in range(2, stage + 1):
        if level == stage or level == 3 or rng.random() < 0.5:
            opts = _WAYPOINTS[level]
            pts.append(np.asarray(opts[rng.integers(len(opts))], float) * mirror)
    return [p + np.clip(rng.standard_normal(3), -2, 2) * 1.5 for p in pts]


def _blobs(rng: np.random.Generator, path: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    centres, radii = [], []
    for a, b in zip(path[:-1], path[1:]):
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / 4.0)) + 1)
        for t in np.linspace(0, 1, n):
            centres.append(a + t * (b - a) + rng.standard_normal(3) * 1.2)
            radii.append(rng.uniform(0.8, 1.2))
    if len(path) == 1:
        centres.append(path[0])
        radii.append(1.0)
    base = np.array(centres)
    for _ in range(int(rng.integers(2, 5))):  # lobules off the main path
        c = base[rng.integers(len(base))]
        d = rng.standard_normal(3)
        centres.append(c + d / np.linalg.norm(d) * rng.uniform(4, 8))
        radii.append(rng.uniform(0.5, 0.9))
    return np.array(centres), np.array(radii)


def _tumour_shape(centres, radii, k: float, noise: Noise) -> sdf.Shape:
    return Deform(Union([Sphere(c, 6.0 * k * r) for c, r in zip(centres, radii)], k=3.0), noise)


def _primary(rng, anat: Anatomy, stage: int, side: str, target_cm3: float):
    """One attempt: (shape, facts) or None when the draw does not realise ``stage``."""
    sx = SIDES[side]
    path = _draw_path(rng, stage, sx)
    centres, radii = _blobs(rng, path)
    noise = Noise(rng, 2.0, 12.0, 8)
    allowed = _stage_constraint(anat, stage)
    k_max = 2.6
    lo = centres.min(0) - (6 * k_max * radii.max() + 4)
    hi = centres.max(0) + (6 * k_max * radii.max() + 4)
    view = _calib_view(lo, hi)
    pts = view.points
    dists = [np.sqrt((pts[0] - c[0]) ** 2 + (pts[1] - c[1]) ** 2 + (pts[2] - c[2]) ** 2) for c in centres]
    nz = noise(pts)
    con = evaluate(allowed, view, 2.0)
    vox_cm3 = CALIB_MM ** 3 / 1000.0

    def field_for(k: float) -> np.ndarray:
        d = None
        for dist, r in zip(dists, radii):
            di = dist - np.float32(6.0 * k * r)
            d = di if d is None else sdf._smin(d, di, 3.0)
        return np.maximum(d + nz, con)

    def vol(k: float) -> float:
        return float(np.count_nonzero(field_for(k) <= 0)) * vox_cm3 * anat.scale ** 3

    k_lo, k_hi = 0.15, k_max
    if vol(k_hi) < target_cm3 * 0.85:
        return None
    k = 1.0
    for _ in range(14):  # bisection on the blob scale
        k = 0.5 * (k_lo + k_hi)
        v = vol(k)
        if abs(v - target_cm3) < 0.03 * target_cm3:
            break
        k_lo, k_hi = (k, k_hi) if v < target_cm3 else (k_lo, k)
    inside = field_for(k) <= 0
    if not inside.any():
        return None
    idx = np.argwhere(inside)
    ext_mm = (idx.max(0) - idx.min(0) + 1) * CALIB_MM * anat.scale
    if ext_mm.max() < MIN_EXTENT_MM:
        return None
    # Realised invasion, measured on the same grid.
    comp = {
        "parapharyngeal/prevertebral": Union([anat.shapes["ParapharyngealFat"],
                                              anat.shapes["Prevertebral"],
                                              anat.shapes["MedialPterygoid"]]),
        "bone": anat.shapes["Bone"],
        "intracranial": anat.shapes["Intracranial"],
    }
    invaded = {}
    for name, shp in comp.items():
        invaded[name] = float(np.count_nonzero(inside & (evaluate(shp, view, 1.0) <= 0))) * vox_cm3 \
            * anat.scale ** 3
    realised = 1
    for lvl, name in ((2, "parapharyngeal/prevertebral"), (3, "bone"), (4, "intracranial")):
        if invaded[name] >= MIN_INVASION_CM3:
            realised = max(realised, lvl)
    if stage == 4 and invaded["intracranial"] < MIN_INVASION_CM3:
        return None
    if realised != stage:
        return None
    shape = Intersect([_tumour_shape(centres, radii, k, noise), allowed])
    lo_in = view.grid.origin + idx.min(0) * CALIB_MM - 3.0
    hi_in = view.grid.origin + idx.max(0) * CALIB_MM + 3.0
    shape = Tight(shape, lo_in, hi_in)
    facts = {"blob_scale": round(k, 4), "n_blobs": int(len(centres)),
             "model_volume_cm3": round(float(inside.sum()) * vox_cm3 * anat.scale ** 3, 3),
             "extent_mm": np.round(ext_mm, 1).tolist(),
             "invaded_cm3": {k_: round(v, 3) for k_, v in invaded.items()},
             "path_mm": np.round(np.array(path), 1).tolist()}
    return shape, facts


def _node(rng, centre, radius: float) -> sdf.Shape:
    r = radius * np.array([1.15, 0.9, 0.95]) * rng.uniform(0.9, 1.1, 3)
    return Deform(Ellipsoid(centre, r), Noise(rng, min(1.2, radius * 0.15), 10.0, 5))


def _nodes(rng, anat: Anatomy, n_stage: int, side: str) -> tuple[sdf.Shape | None, list[dict]]:
    if n_stage == 0:
        return None, []
    sx = SIDES[side]
    u = rng.uniform

    def level2(s):
        return np.array([u(-48, -22), u(17, 26), s * u(37, 44)])

    def rp(s):
        return np.array([u(-10, 0), u(17, 20), s * u(14, 17)])

    def level3(s):
        return np.array([u(-80, -60), u(12, 20), s * u(33, 40)])

    sites: list[tuple[np.ndarray, float]] = []
    if n_stage == 1:
        kind = rng.integers(3)
        if kind in (0, 2):
            sites.append((level2(sx), u(6, 12)))
        if kind in (1, 2):
            sites.append((rp(sx), u(5, 8)))
        if rng.random() < 0.3:
            sites.append((rp(-sx), u(4, 6)))
    elif n_stage == 2:
        for s in (sx, -sx):
            sites.append((level2(s), u(6, 13)))
        if rng.random() < 0.5:
            sites.append((rp(sx), u(5, 8)))
    else:
        top = level2(sx)
        bottom = level3(sx)
        for t in np.linspace(0, 1, 4):
            sites.append((top + t * (bottom - top), u(11, 15)))
        if rng.random() < 0.6:
            sites.append((level2(-sx), u(6, 11)))
    S = anat.shapes
    shapes = [_node(rng, c, r) for c, r in sites]
    gtvnd = Subtract(Intersect([Union(shapes, k=4.0 if n_stage == 3 else 0.0), S["Body"]]),
                     [Offset(S["Vessels"], 0.5), S["Air"], S["Bone"], Offset(S["Protected"], 1.0),
                      S["Parotid_L"], S["Parotid_R"]])
    return gtvnd, [{"centre_mm": np.round(c, 1).tolist(), "radius_mm": round(float(r), 1)}
                   for c, r in sites]


def build(rng: np.random.Generator, anat: Anatomy, *, t_stage: int | None = None,
          n_stage: int | None = None, ctv_margin_mm: float = 5.0,
          ctvnd_margin_mm: float = 5.0) -> Lesions:
    """Draw the lesions of one patient from ``rng`` (the patient's "lesion" stream)."""
    t_draw = int(rng.choice(T_STAGES, p=T_FREQ))
    n_draw = int(rng.choice(N_STAGES, p=N_FREQ))
    side = "L" if rng.random() < 0.5 else "R"
    t = t_draw if t_stage is None else int(t_stage)
    n = n_draw if n_stage is None else int(n_stage)
    lo_v, hi_v = VOLUME_RANGE_CM3[t]
    result, tries = None, 0
    while result is None:
        tries += 1
        if tries > 200:
            raise RuntimeError(f"phantom: could not draw a T{t} tumour in 200 tries")
        target = float(np.exp(rng.uniform(np.log(lo_v), np.log(hi_v))))
        result = _primary(rng, anat, t, side, target)
    gtvp, facts = result
    facts.update(target_volume_cm3=round(target, 3), tries=tries)
    gtvnd, node_facts = _nodes(rng, anat, n, side)
    S = anat.shapes
    ctvp = Union([gtvp, Subtract(Intersect([Offset(gtvp, ctv_margin_mm), S["Body"]]), [S["Air"]])])
    elective = []
    for sx in SIDES.values():
        elective.append(Capsule((-6, 22, 36 * sx), (-62, 16, 36 * sx), 11.0))
        elective.append(Capsule((4, 18, 15 * sx), (-14, 18, 15 * sx), 6.5))
    nodal = elective + ([Offset(gtvnd, ctvnd_margin_mm)] if gtvnd is not None else [])
    ctvnd = Subtract(Intersect([Union(nodal), S["Body"]]),
                     [S["Air"], S["Vertebrae"], Offset(S["SpinalCanal"], 1.0)])
    texture = unit_rms(Noise(rng, 1.0, TEXTURE_WAVELENGTH_MM, 12))
    necrosis, necrosis_facts = _necrosis(rng, t, gtvp, facts)  # drawn last: every earlier draw stays
    return Lesions(t, n, side, gtvp, gtvnd, ctvp, ctvnd, texture,
                   {"primary": facts, "nodes": node_facts, "necrosis": necrosis_facts}, necrosis)


def _necrosis(rng: np.random.Generator, stage: int, gtvp: sdf.Shape, facts: dict):
    """A necrotic core, drawn for an advanced tumour with probability :data:`NECROSIS_P` of its stage:
    a noise-deformed sphere of radius :data:`NECROSIS_RADIUS_MM` around a point of the tumour's path,
    kept at least :data:`NECROSIS_RIM_MM` inside the tumour (an enhancing rim). (shape or None, facts)."""
    draw = rng.random()
    centre = np.asarray(facts["path_mm"][int(rng.integers(len(facts["path_mm"])))], float)
    radius = float(rng.uniform(*NECROSIS_RADIUS_MM))
    noise = Noise(rng, 1.5, 6.0, 6)
    if draw >= NECROSIS_P.get(stage, 0.0):
        return None, {"present": False}
    core = Intersect([Deform(Sphere(centre, radius), noise), Offset(gtvp, -NECROSIS_RIM_MM)])
    return core, {"present": True, "centre_mm": np.round(centre, 1).tolist(), "radius_mm": round(radius, 1)}
