"""The virtual patient's anatomy: organs and tissues of the head and neck as implicit shapes (mm).

Canonical frame (before the patient's pose is applied), (z, y, x) in mm: **z superior**, **y
anterior -> posterior**, **x right -> left** (so ``x > 0`` is the patient's left, as in DICOM LPS),
origin at the centre of the nasopharyngeal lumen. Landmarks, roughly: eyes at z = +38, optic chiasm
+49, skull-base floor +3 (foramen magnum) to +54 (anterior fossa), hard palate -9, C2 body -28,
mandibular body -42 to -56; the spinal cord runs at y = +47, the mandible's symphysis at y = -74.

Each patient gets seeded variability: an overall size (scale ~ N(1, 0.05)), a pose (nodding,
turning and tilting by a few degrees, a few mm of shift), per-organ size and position jitter with
left/right asymmetry, and smooth noise deformations of the soft organs and the body outline.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npcrepro.phantom import sdf
from npcrepro.phantom.render import Pose
from npcrepro.phantom.sdf import (Capsule, Deform, Ellipsoid, EllipticPrism, Function, HalfSpace,
                                  Intersect, Noise, Offset, RoundBox, Sphere, Subtract, Union,
                                  rotation, tube)

SIDES = {"L": 1.0, "R": -1.0}
CORTEX_MM = 2.0  # cortical bone thickness; what lies deeper is marrow


@dataclass
class Layer:
    """One painted structure: ``shape`` filled with ``tissue``; ``label`` names the structure mask
    it contributes to (None: it only shows in the images and the tissue map)."""

    name: str
    shape: sdf.Shape
    tissue: str
    label: str | None = None


@dataclass
class Anatomy:
    """A patient's anatomy: painter's-order layers (later ones cover earlier ones), named shapes
    for labels and lesion constraints, and the pose placing it in the scanner."""

    pose: Pose
    scale: float
    layers: list[Layer]
    shapes: dict[str, sdf.Shape]
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)


class _Jitter:
    """Truncated-Gaussian perturbations drawn from one generator, in a fixed order."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def n(self, sd: float, size=None):
        return np.clip(self.rng.standard_normal(size), -2.5, 2.5) * sd

    def rel(self, v, sd: float):
        v = np.asarray(v, float)
        return v * (1.0 + self.n(sd, v.shape if v.ndim else None))

    def pos(self, p, sd_mm: float):
        p = np.asarray(p, float)
        return p + self.n(sd_mm, p.shape)


def _smoothstep(v: np.ndarray, a: float, b: float) -> np.ndarray:
    t = np.clip((v - np.float32(a)) / np.float32(b - a), 0.0, 1.0)
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


class _SkullBase:
    """The floor of the cranial cavity as a height field ``zf(y, |x|)`` and the thickness ``T`` of
    the bone below it: anterior fossa (orbital roofs), planum and sella, the clivus sloping down to
    the foramen magnum, middle cranial fossae laterally, petrous ridges, posterior fossa."""

    def __init__(self, j: _Jitter):
        dz = j.n(2.0)
        self.cy = np.array([-300, -30, -22, 2, 8, 38, 100, 300], float)
        self.cz = np.array([54, 54, 44, 44, 42, 3, 26, 26], float) + dz
        self.ly = np.array([-300, -30, -22, 16, 24, 46, 100, 300], float)
        self.lz = np.array([54, 54, 18, 18, 28, 10, 26, 26], float) + dz + j.n(1.5)
        self.cty = np.array([-300, -30, -22, 8, 38, 44, 300], float)
        self.ct = np.array([6, 6, 28, 26, 8, 7, 7], float)
        self.lty = np.array([-300, -30, -22, 16, 26, 40, 300], float)
        self.lt = np.array([6, 6, 8, 8, 16, 8, 7], float)

    def floor(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lat = _smoothstep(np.abs(x), 13.0, 24.0)
        zc = np.interp(y, self.cy, self.cz).astype(np.float32)
        zl = np.interp(y, self.ly, self.lz).astype(np.float32)
        tc = np.interp(y, self.cty, self.ct).astype(np.float32)
        tl = np.interp(y, self.lty, self.lt).astype(np.float32)
        return zc + (zl - zc) * lat, tc + (tl - tc) * lat

    def above(self, p):
        """Negative above the floor (the cranial cavity side)."""
        zf, _ = self.floor(p[1], p[2])
        return (zf - p[0]) * np.float32(0.8)

    def above_bottom(self, p):
        """Negative above the underside of the skull-base bone."""
        zf, t = self.floor(p[1], p[2])
        return (zf - t - p[0]) * np.float32(0.8)

    def band(self, p):
        """Negative inside the skull-base bone (between its underside and the floor)."""
        zf, t = self.floor(p[1], p[2])
        return np.maximum(zf - t - p[0], p[0] - zf) * np.float32(0.8)


def _cached(shape: sdf.Shape) -> sdf.Shape:
    shape.cache = True
    return shape


def build(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy from ``rng`` (the patient's "anatomy" stream)."""
    j = _Jitter(rng)
    scale = float(np.clip(1.0 + j.n(0.05), 0.88, 1.12))
    R = rotation(rz=j.n(2.5), ry=j.n(2.0), rx=j.n(3.0))
    t = j.n(1.0, 3) * np.array([4.0, 4.0, 3.0])
    pose = Pose(R, t, scale)
    S: dict[str, sdf.Shape] = {}
    L: list[Layer] = []
    lm: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ body outline and skull
    head = Ellipsoid(j.pos((50, 12, 0), 2), j.rel((100, 92, 76), 0.035))
    body = Union([
        head,
        Ellipsoid(j.pos((-5, -40, 0), 2), j.rel((45, 58, 60), 0.04)),          # midface
        Ellipsoid(j.pos((-28, -5, 0), 2), j.rel((42, 62, 66), 0.04)),          # jaws, cheeks
        Ellipsoid(j.pos((-52, -50, 0), 2), j.rel((22, 35, 45), 0.05)),         # chin
        Ellipsoid(j.pos((12, -94, 0), 1.5), j.rel((24, 14, 11), 0.06)),        # nose
        RoundBox(j.pos((-115, 25, 0), 2), j.rel((90, 57, 55), 0.05), 40),     # neck
    ], k=20)
    body = _cached(Deform(body, Noise(rng, 3.0, 70.0, 5)))
    S["Body"] = body
    L.append(Layer("body", body, "soft", "Body"))
    L.append(Layer("subcutaneous fat", Subtract(body, [Offset(body, -float(j.rel(6.5, 0.2)))]), "fat"))

    base = _SkullBase(j)
    floor_box = (np.array([-20.0, -300, -300]), np.array([300.0, 300, 300]))
    above_floor = Function(base.above, *floor_box)
    above_bottom = Function(base.above_bottom, *floor_box)
    band = Function(base.band, np.array([-20.0, -300, -300]), np.array([60.0, 300, 300]))
    vault_outer = Offset(head, -5.0)
    vault_inner = Offset(head, -float(j.rel(12.0, 0.08)))
    brain = Intersect([vault_inner, above_floor])
    S["Brain"] = brain
    S["Intracranial"] = brain
    foramen_magnum = EllipticPrism((50, 0), j.rel((12, 15), 0.05), -40, 20)

    # ------------------------------------------------------------------ airway and sinuses
    np_lumen = Union([
        RoundBox(j.pos((1, -3, 0), 1), j.rel((11, 9, 11), 0.08), 6),
        *[Ellipsoid(j.pos((4, 3, 11 * sx), 1), j.rel((5, 4, 4), 0.1)) for sx in SIDES.values()],
    ], k=4)
    oro = EllipticPrism(j.pos((1, 0), 1), j.rel((7, 12), 0.1), -62, -4)
    lower = tube([(-55, 1, 0), (-75, -4, 0), (-95, -12, 0), (-210, -18, 0)], [7, 8, 8, 8])
    septum = RoundBox((8, -48, 0), (15, 30, 1.2), 1)
    turbinates = [Capsule((z, -70, 11 * sx), (z, -22, 11 * sx), r)
                  for sx in SIDES.values() for z, r in ((0, 5.0), (10, 4.5), (18, 3.5))]
    nasal = Subtract(RoundBox(j.pos((8, -45, 0), 1), j.rel((15, 33, 12), 0.06), 5),
                     [septum, *turbinates])
    pharynx = Union([np_lumen, oro, lower], k=3)
    airway = _cached(Union([pharynx, nasal], k=3))
    sinuses = Union([
        Ellipsoid(j.pos((28, -8, 0), 1.5), j.rel((9, 11, 12), 0.12)),                 # sphenoid
        RoundBox(j.pos((35, -45, 0), 1), j.rel((9, 16, 9), 0.08), 3),                  # ethmoid
        *[Ellipsoid(j.pos((5, -52, 30 * sx), 1.5), j.rel((14, 15, 11), 0.08))          # maxillary
          for sx in SIDES.values()],
        Ellipsoid(j.pos((62, -70, 0), 2), j.rel((8, 6, 14), 0.2)),                     # frontal
    ])
    S["NasopharynxLumen"] = np_lumen
    S["PharyngealAirway"] = airway
    S["Air"] = Union([airway, sinuses])
    t_muc = float(j.rel(3.5, 0.12))
    lm["fossa_L"], lm["fossa_R"] = (np.array([4.0, 4.0, 13.0 * sx]) for sx in SIDES.values())

    # ------------------------------------------------------------------ fat planes
    pps = Union([Ellipsoid(j.pos((-4, 2, 23 * sx), 1.5), j.rel((16, 10, 6), 0.1))
                 for sx in SIDES.values()])
    orbit = {s: Ellipsoid(j.pos((38, -50, 30 * sx), 1), j.rel((13, 24, 15), 0.04))
             for s, sx in SIDES.items()}
    S["ParapharyngealFat"] = pps
    L.append(Layer("parapharyngeal fat", pps, "fat"))
    L.append(Layer("orbital fat", Union(list(orbit.values())), "fat"))

    # ------------------------------------------------------------------ muscles
    prevertebral = Union([tube([(10, 17, 10 * sx), (-20, 18, 9 * sx), (-130, 19, 8 * sx)],
                               float(j.rel(4.5, 0.1))) for sx in SIDES.values()])
    med_ptery = Union([Capsule(j.pos((0, -6, 27 * sx), 1), j.pos((-42, 0, 43 * sx), 1.5),
                               float(j.rel(6.5, 0.1))) for sx in SIDES.values()])
    muscles = [
        ("tongue", Ellipsoid(j.pos((-36, -45, 0), 2), j.rel((20, 30, 26), 0.06))),
        ("soft palate", Ellipsoid(j.pos((-12, -16, 0), 1), j.rel((5, 13, 16), 0.1))),
        ("medial pterygoids", med_ptery),
        ("lateral pterygoids", Union([Capsule((6, -10, 28 * sx), (6, 6, 48 * sx), float(j.rel(7, 0.1)))
                                      for sx in SIDES.values()])),
        ("masseters", Union([Capsule(j.pos((2, -24, 58 * sx), 1.5), j.pos((-44, -14, 56 * sx), 1.5),
                                     float(j.rel(7.5, 0.1))) for sx in SIDES.values()])),
        ("sternocleidomastoids", Union([Capsule((0, 42, 52 * sx), (-210, -25, 22 * sx),
                                                float(j.rel(8.5, 0.1))) for sx in SIDES.values()])),
        ("paraspinal muscles", RoundBox(j.pos((-90, 68, 0), 2), j.rel((100, 14, 38), 0.05), 12)),
        ("prevertebral muscles", prevertebral),
    ]
    for name, shp in muscles:
        L.append(Layer(name, shp, "muscle"))
    constrictor = Intersect([Offset(pharynx, t_muc + float(j.rel(4.5, 0.12))),
                             HalfSpace((0, -1, 0), 8.0), HalfSpace((1, 0, 0), 15.0)])
    L.append(Layer("pharyngeal constrictor", constrictor, "muscle"))
    S["Prevertebral"] = prevertebral
    S["MedialPterygoid"] = med_ptery
    S["Constrictor"] = constrictor

    # ------------------------------------------------------------------ bones
    mandible = {}
    mandible_noise = Noise(rng, 0.8, 25.0, 4)
    for s, sx in SIDES.items():
        sym_y = -74.0
        body_up = tube([(-42, sym_y, 0), (-43, -64, 24 * sx), (-44, -38, 41 * sx), (-46, -10, 47 * sx)], 5.5)
        body_lo = tube([(-56, sym_y + 2, 0), (-56, -62, 25 * sx), (-56, -36, 42 * sx), (-55, -8, 47 * sx)], 5.5)
        ramus = tube([(-55, -8, 47 * sx), (-30, -3, 48 * sx), (-8, 3, 50 * sx), (4, 7, 52 * sx)],
                     [6, 5.5, 4.5, 6])
        coronoid = tube([(-36, -14, 46 * sx), (-10, -20, 45 * sx)], [5, 3.5])
        # One deformation for the whole bone, then split at the midline (x >= 0 is the left).
        whole = Deform(Union([body_up, body_lo, ramus, coronoid], k=6), mandible_noise)
        mandible[s] = Intersect([whole, HalfSpace((0, 0, -sx), 0.0 if sx > 0 else -1e-4)])
    vertebrae = []
    c1 = Union([
        Capsule((-8, 24, -9), (-8, 24, 9), 4.5),
        *[Ellipsoid((-8, 34, 17 * sx), (7, 8, 6)) for sx in SIDES.values()],
        tube([(-8, 38, 18), (-8, 56, 12), (-8, 61, 0), (-8, 56, -12), (-8, 38, -18)], 3.5),
        *[Capsule((-8, 36, 20 * sx), (-8, 38, 36 * sx), 4.0) for sx in SIDES.values()],
        Capsule((-2, 31, 0), (-22, 31, 0), 5.0),  # dens of C2
    ])
    vertebrae.append(("C1", c1))
    for k, zk in enumerate((-28, -45, -62, -79, -96, -113), start=2):
        zk = zk + j.n(1.0)
        ring = Intersect([Subtract(EllipticPrism((47, 0), (13, 15), zk - 5, zk + 5),
                                   [EllipticPrism((47, 0), (8.0, 10.5), zk - 6, zk + 6)]),
                          HalfSpace((0, -1, 0), -40.0)])
        v = Union([RoundBox((zk, 31, 0), (7, 8, 9), 3), ring,
                   Capsule((zk, 58, 0), (zk - 8, 72, 0), 3.5),
                   *[Capsule((zk, 40, 13 * sx), (zk, 42, 27 * sx), 3.5) for sx in SIDES.values()]])
        vertebrae.append((f"C{k}", v))
    skull_vault = Intersect([Subtract(vault_outer, [vault_inner]), above_bottom])
    skull_base = Subtract(Intersect([band, vault_outer]), [foramen_magnum])
    orbit_walls = Union([Intersect([Subtract(Offset(o, 2.0), [o]), HalfSpace((0, -1, 0), 66.0)])
                         for o in orbit.values()])
    bones = [
        ("skull vault", skull_vault, None),
        ("skull base", skull_base, None),
        ("mastoids", Union([Ellipsoid((2, 38, 50 * sx), (13, 11, 9)) for sx in SIDES.values()]), None),
        ("pterygoid plates", Union([RoundBox((-2, -8, 21 * sx), (12, 7, 1.3), 1) for sx in SIDES.values()]
                                   + [RoundBox((-2, -6, 26 * sx), (11, 8, 1.3), 1) for sx in SIDES.values()]),
         None),
        ("hard palate", RoundBox(j.pos((-9, -45, 0), 1), (2.5, 27, 18), 2), None),
        ("zygomas", Union([Ellipsoid((14, -56, 48 * sx), (12, 9, 8)) for sx in SIDES.values()]
                          + [Capsule((6, -42, 56 * sx), (6, 0, 62 * sx), 3.5) for sx in SIDES.values()]),
         None),
        ("nasal septum", septum, None),
        ("orbit walls", orbit_walls, None),
        ("upper teeth", tube([(-16, -72, 0), (-16, -64, 22), (-16, -38, 30), (-16, -22, 30)], 5.0)
         | tube([(-16, -72, 0), (-16, -64, -22), (-16, -38, -30), (-16, -22, -30)], 5.0), None),
        *[(name, v, None) for name, v in vertebrae],
        ("left mandible", mandible["L"], "Mandible_L"),
        ("right mandible", mandible["R"], "Mandible_R"),
    ]
    S["Mandible_L"], S["Mandible_R"] = mandible["L"], mandible["R"]
    S["Bone"] = Union([b for _, b, _ in bones])
    S["SkullBase"] = Union([skull_base, bones[3][1]])
    S["Vertebrae"] = Union([v for _, v in vertebrae])

    # ------------------------------------------------------------------ vessels, glands, nodes
    vessels = []
    for sx in SIDES.values():
        vessels.append(tube([(-210, 5, 24 * sx), (-60, 14, 24 * sx), (-20, 19, 23 * sx),
                             (8, 22, 20 * sx), (16, 16, 18 * sx)], float(j.rel(3.2, 0.08))))
        vessels.append(tube([(-210, 5, 32 * sx), (-60, 22, 31 * sx), (-10, 30, 30 * sx),
                             (3, 34, 30 * sx)], float(j.rel(5.5, 0.1))))
    vessels = Union(vessels)
    S["Vessels"] = vessels
    parotid = {}
    for s, sx in SIDES.items():
        lobes = Union([Ellipsoid(j.pos((-8, 14, 42 * sx), 1.5), j.rel((18, 11, 8), 0.08)),
                       Ellipsoid(j.pos((-12, 2, 57 * sx), 1.5), j.rel((20, 13, 7), 0.08)),
                       Ellipsoid(j.pos((-32, 10, 50 * sx), 2), j.rel((10, 10, 9), 0.1))], k=6)
        parotid[s] = Subtract(Deform(lobes, Noise(rng, 2.5, 22.0, 5)),
                              [Offset(mandible[s], 1.5), Offset(vessels, 1.0)])
        S[f"Parotid_{s}"] = parotid[s]
    submandibular = Union([Ellipsoid(j.pos((-58, -22, 34 * sx), 1.5), j.rel((10, 13, 9), 0.1))
                           for sx in SIDES.values()])
    normal_nodes = []
    for sx in SIDES.values():
        for zc in (-30.0, -45.0):
            normal_nodes.append(Ellipsoid(j.pos((zc, 22, 40 * sx), 3), j.rel((5, 4, 4), 0.2)))
        normal_nodes.append(Ellipsoid(j.pos((-6, 18, 16 * sx), 1), j.rel((4, 3, 3), 0.2)))
    L.append(Layer("left parotid", parotid["L"], "gland", "Parotid_L"))
    L.append(Layer("right parotid", parotid["R"], "gland", "Parotid_R"))
    L.append(Layer("submandibular glands", submandibular, "gland"))
    L.append(Layer("vessels", vessels, "vessel"))
    L.append(Layer("normal lymph nodes", Subtract(Union(normal_nodes), [vessels]), "node"))

    # ------------------------------------------------------------------ brain, CSF, bones, nerves
    brainstem_tube = tube([(2, 46, 0), (18, 38, 0), (34, 30, 0), (52, 24, 0), (66, 20, 0)],
                          j.rel([6.5, 9, 13, 11, 10], 0.06), k=4)
    brainstem = Intersect([brainstem_tube, HalfSpace((-1, 0, 0), -2.0)])
    cord = EllipticPrism((47, 0), j.rel((3.8, 5.0), 0.06), -210, 2.0)
    canal = EllipticPrism((47, 0), (7.5, 10.0), -210, 6.0)
    L.append(Layer("brain", brain, "brain", None))
    L.append(Layer("CSF", Union([Offset(brainstem_tube, 3.0), canal]), "csf"))
    for name, b, label in bones:
        b = _cached(b)
        L.append(Layer(name, b, "cortex", label))
        if name not in ("upper teeth", "nasal septum", "orbit walls", "pterygoid plates"):
            L.append(Layer(name + " marrow", Offset(b, -CORTEX_MM), "marrow"))
    eyes = {s: Sphere(j.pos((38, -62, 31 * sx), 1), float(j.rel(12.0, 0.03))) for s, sx in SIDES.items()}
    chiasm = Ellipsoid(j.pos((49, -4, 0), 1), j.rel((2.5, 5, 8), 0.08))
    nerves = {s: Subtract(tube([(38, -50, 29 * sx), (41, -34, 21 * sx), (45, -20, 12 * sx),
                                (48, -9, 6 * sx)], float(j.rel(2.3, 0.06))), [chiasm])
              for s, sx in SIDES.items()}
    L.append(Layer("brainstem", brainstem, "neural", "Brainstem"))
    L.append(Layer("spinal cord", cord, "neural", "SpinalCord"))
    L.append(Layer("left eye", eyes["L"], "vitreous", "Eye_L"))
    L.append(Layer("right eye", eyes["R"], "vitreous", "Eye_R"))
    L.append(Layer("left optic nerve", nerves["L"], "neural", "OpticNerve_L"))
    L.append(Layer("right optic nerve", nerves["R"], "neural", "OpticNerve_R"))
    L.append(Layer("chiasm", chiasm, "neural", "Chiasm"))
    S.update(Brainstem=brainstem, SpinalCord=cord, SpinalCanal=canal, Chiasm=chiasm,
             Eye_L=eyes["L"], Eye_R=eyes["R"], OpticNerve_L=nerves["L"], OpticNerve_R=nerves["R"])

    # ------------------------------------------------------------------ mucosa, adenoid, air
    mucosa = Offset(airway, t_muc)
    adenoid = Ellipsoid(j.pos((9, 9, 0), 1), (8.0, float(j.rel(7.0, 0.2)), 14.0))
    L.append(Layer("mucosa", mucosa, "mucosa"))
    L.append(Layer("adenoid", adenoid, "adenoid"))
    L.append(Layer("airway", airway, "air"))
    L.append(Layer("sinuses", sinuses, "air"))
    S["Mucosa"] = Union([mucosa, adenoid])
    S["Protected"] = Union([brainstem, cord, eyes["L"], eyes["R"], nerves["L"], nerves["R"], chiasm])

    facts = {"scale": scale, "pose_rotation": R.round(6).tolist(), "pose_shift_mm": t.round(3).tolist(),
             "mucosa_mm": round(t_muc, 2)}
    return Anatomy(pose, scale, L, S, lm, facts)
