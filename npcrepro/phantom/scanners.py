"""Scanners: render one patient's tissue map as CT, T1, T2, CET1, contrast-enhanced CT and DCE-MRI.

All modalities come from one painting pass over the patient's layers (see
:mod:`npcrepro.phantom.render`): each voxel is a partial-volume mix of tissue classes and each
modality maps the mix to its values (:mod:`npcrepro.phantom.tissues`). Then per modality:

* **CT** (HU): additive Gaussian noise of sd ``ct_noise_hu`` per voxel; clipped to [-1024, 3071].
* **CECT** (HU): the contrast-enhanced CT (venous phase, :mod:`npcrepro.phantom.tissues`): the same
  noise model and clipping as CT, from its own random stream.
* **T1, T2, CET1**: the patient's receiver gain, a smooth multiplicative bias field (about
  ``bias_field`` peak, wavelength of tens of cm: a coil's profile), Rician noise of sd ``mri_noise``
  (as a fraction of muscle's T1 signal). The three sequences are co-registered: same grid.
* **DCE**: spoiled-gradient-echo signal (flip 15 deg, TR 3.5 ms, r1 4.0 /s/mM) of the extended Tofts
  model, ``C_t = vp C_p + Ktrans (C_p * exp(-kep t))``, ``kep = Ktrans / ve``, driven by Parker's
  population arterial input function (Parker et al., MRM 2006) with haematocrit 0.42. li2018's
  protocol: 65 frames in 6 min 47 s (6.26 s per frame), the bolus arriving with the 8th
  (``DCE_007``, frames numbered from 0); the tumour's kinetics (Ktrans 0.2 /min, ve 0.47, vp 0.01)
  make its enhancement peak near the 35th frame (``DCE_034``), the one li2018 segments.

Noise sds are set per voxel of the rendered grid (not scaled with voxel size), so the contrast-to-
noise ratios are the same at every size preset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

from npcrepro.phantom import render
from npcrepro.phantom.anatomy import Anatomy, Layer
from npcrepro.phantom.lesions import Lesions
from npcrepro.phantom.render import Grid
from npcrepro.phantom.sdf import Noise
from npcrepro.phantom.tissues import CLASS_ID, TISSUES, TUMOUR_TEXTURE

#: Static channels in dataset order. CECT comes last so that the older channels keep their indices
#: (``_0000`` CT ... ``_0003`` CET1) in a dataset.
STATIC = ("CT", "T1", "T2", "CET1", "CECT")
#: The CT-like channels (HU, Gaussian noise, clipped like CT).
HU_CHANNELS = ("CT", "CECT")
MODALITIES = STATIC + ("DCE",)

# DCE acquisition (li2018): 65 frames in 6 min 47 s, bolus at about the 8th acquisition. Frames are
# numbered from 0 (DCE_000 is the first), so the 8th is frame 7 and li2018's "35th scan" is DCE_034.
DCE_FRAMES = 65
DCE_INTERVAL_S = 407.0 / 65.0
DCE_BOLUS_FRAME = 7
FLIP_DEG = 15.0
TR_S = 0.0035
R1_PER_MM_S = 4.0
HAEMATOCRIT = 0.42


@dataclass
class ScannerSettings:
    """Acquisition parameters (see the module docstring)."""

    ct_noise_hu: float = 12.0
    mri_noise: float = 0.045
    bias_field: float = 0.15
    dce_frames: int = DCE_FRAMES
    dce_interval_s: float = DCE_INTERVAL_S
    dce_bolus_frame: int = DCE_BOLUS_FRAME
    dce_noise: float = 0.02

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------- DCE physics
def parker_aif(t_min: np.ndarray) -> np.ndarray:
    """Parker's population AIF: whole-blood Gd concentration (mM) at ``t_min`` minutes after the
    bolus arrives (zero before)."""
    t = np.asarray(t_min, float)
    a1, a2, t1, t2, s1, s2 = 0.809, 0.330, 0.17046, 0.365, 0.0563, 0.132
    alpha, beta, s, tau = 1.050, 0.1685, 38.078, 0.483
    g1 = a1 / (s1 * np.sqrt(2 * np.pi)) * np.exp(-((t - t1) ** 2) / (2 * s1 ** 2))
    g2 = a2 / (s2 * np.sqrt(2 * np.pi)) * np.exp(-((t - t2) ** 2) / (2 * s2 ** 2))
    tail = alpha * np.exp(-beta * t) / (1 + np.exp(-s * (t - tau)))
    return np.where(t >= 0, g1 + g2 + tail, 0.0)


def tofts(t_min: np.ndarray, ktrans: float, ve: float, vp: float, step_s: float = 0.5) -> np.ndarray:
    """Extended-Tofts tissue concentration (mM) at ``t_min`` minutes after bolus arrival."""
    t_min = np.asarray(t_min, float)
    tf = np.arange(0.0, max(float(t_min.max()), 0.0) + step_s / 60.0, step_s / 60.0)
    cp = parker_aif(tf) / (1 - HAEMATOCRIT)
    conv = np.zeros_like(tf)
    if ktrans > 0 and ve > 0:
        decay = np.exp(-(ktrans / ve) * (step_s / 60.0))
        acc = 0.0
        for i, c in enumerate(cp):  # exponential convolution, one step at a time
            acc = acc * decay + c * (step_s / 60.0)
            conv[i] = acc
    ct = vp * cp + ktrans * conv
    return np.where(t_min >= 0, np.interp(t_min, tf, ct), 0.0)


def spgr(m0: float, t10: float, conc: np.ndarray) -> np.ndarray:
    """Spoiled-gradient-echo signal for concentration ``conc`` (mM)."""
    r1 = 1.0 / t10 + R1_PER_MM_S * np.asarray(conc, float)
    e1 = np.exp(-TR_S * r1)
    a = np.deg2rad(FLIP_DEG)
    return m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


def frame_times_min(settings: ScannerSettings) -> np.ndarray:
    """Time of each DCE frame in minutes after the bolus arrives (negative before)."""
    n = np.arange(settings.dce_frames)
    return (n - settings.dce_bolus_frame) * settings.dce_interval_s / 60.0


def class_curves(settings: ScannerSettings, kinetics: dict[str, tuple]) -> np.ndarray:
    """(frames, classes) DCE signal of every tissue class, before gain, bias and noise."""
    t = frame_times_min(settings)
    out = np.zeros((t.size, len(TISSUES)))
    ref = spgr(1.0, 1.0, 0.0)
    for name, cid in CLASS_ID.items():
        m0, t10, ktrans, ve, vp = kinetics[name]
        if name == "vessel":
            conc = parker_aif(t)
        else:
            conc = tofts(t, ktrans, ve, vp)
        out[:, cid] = 1000.0 * spgr(m0, t10, conc) / ref
    return out


# ---------------------------------------------------------------------------------- contrasts
@dataclass
class Contrast:
    """One patient's tissue values per modality (class id order) and DCE kinetics."""

    values: dict[str, np.ndarray]
    kinetics: dict[str, tuple]
    gains: dict[str, float]
    facts: dict = field(default_factory=dict)


def draw_contrast(rng: np.random.Generator) -> Contrast:
    """Patient-to-patient variation of tissue properties (from the patient's "contrast" stream):
    CT values +-1 HU, MRI values +-2 %, a receiver gain per sequence (0.8-1.25), kinetic
    parameters +-15 % (see below); CECT = this patient's CT values plus each tissue's enhancement
    (``cect - ct`` of :data:`~npcrepro.phantom.tissues.TISSUES`) times one bolus factor (1 +- 0.1).
    The CECT draw comes last, so every other value is what it was before CECT existed."""
    n = len(TISSUES)
    ct_shift = np.clip(rng.standard_normal(n), -2.5, 2.5) * 1.0
    values = {"CT": np.array([t.ct for t in TISSUES.values()]) + ct_shift}
    gains = {}
    for m in ("T1", "T2", "CET1"):
        rel = 1 + np.clip(rng.standard_normal(n), -2.5, 2.5) * 0.02
        gains[m] = float(rng.uniform(0.8, 1.25))
        values[m] = np.array([getattr(t, m.lower()) for t in TISSUES.values()]) * rel * gains[m]
    values["CT"][CLASS_ID["outside"]] = values["CT"][CLASS_ID["air"]] = -1000.0
    # Ktrans and ve vary together (+-15 %), their ratio kep (which sets when a tissue peaks)
    # only by +-4 %, so the tumour keeps peaking near li2018's frame 35.
    kin_rel = 1 + np.clip(rng.standard_normal((n, 2)), -2.5, 2.5) * np.array([0.15, 0.04])
    gains["DCE"] = float(rng.uniform(0.8, 1.25))
    kinetics = {}
    for i, (name, t) in enumerate(TISSUES.items()):
        kinetics[name] = (t.m0 * gains["DCE"], t.t10, t.ktrans * kin_rel[i, 0] * kin_rel[i, 1],
                          min(t.ve * kin_rel[i, 0], 0.9), t.vp)
    # CECT, drawn last: the same tissue baselines (CT values with their jitter) plus the enhancement,
    # scaled per patient (injection and circulation differ); outside and air stay -1000 HU.
    bolus = float(1 + np.clip(rng.standard_normal(), -2.5, 2.5) * 0.1)
    ct = np.array([t.ct for t in TISSUES.values()])
    enhancement = np.array([t.cect for t in TISSUES.values()]) - ct
    values["CECT"] = values["CT"] + enhancement * bolus
    values["CECT"][CLASS_ID["outside"]] = values["CECT"][CLASS_ID["air"]] = -1000.0
    return Contrast({k: v.astype(np.float32) for k, v in values.items()}, kinetics, gains,
                    {"cect_bolus_factor": round(bolus, 4)})


# ---------------------------------------------------------------------------------- painting
@dataclass
class Painted:
    images: dict[str, np.ndarray]       # static modalities, noise-free, (z, y, x) float32
    weights: np.ndarray | None          # (classes, z, y, x) tissue fractions, for DCE
    texture: np.ndarray | None          # tumour fraction x texture, for DCE
    tissue: np.ndarray                  # (z, y, x) uint8 class id at each voxel centre
    labels: dict[str, np.ndarray]       # organ masks from the layers
    #: The tumour's edge as painted: (the grid slices of its view, its fraction there (float32), the
    #: tissue class ids beneath it (uint8)); None without a tumour on the grid. The raters read it.
    tumour_edge: tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None = None


#: How many times wider than ``infiltration_mm`` the tumour's infiltrative edge is where it meets each
#: host tissue (1 for any other). NPC spreads along the parapharyngeal space's fascial planes (fat and
#: fatty connective tissue) and replaces the skull base's marrow, and there its margin on MRI is
#: ill-defined, while against muscle and mucosa it pushes a sharper front (the factors are assumed:
#: chen2020 names T1 the sequence for "skull base involvement and fat planes", no paper gives a width).
#: Checked, loosely, against the real NPC T2 slices: the edges they make are as sharp as real tumours'
#: (:func:`npcrepro.phantom.measure.edge_widths`; the data page's development record), a measure that
#: tells 1 mm from 8 mm of ``infiltration_mm`` only weakly.
INFILTRATION_SCALE = {"fat": 2.5, "soft": 2.0, "marrow": 2.5}
#: The stranding field: wavelength (mm) of the smooth field that makes the infiltrative edge reach
#: farther in some places than in others, the standard deviation of its natural logarithm, and where
#: the field (of unit root mean square) is clipped, which bounds the width.
STRANDING_WAVELENGTH_MM = 8.0
STRANDING_LOG_SD = 0.4
STRANDING_CLIP = 2.5
#: Standard deviation (mm) of the Gaussian that blends the width between neighbouring host tissues.
_WIDTH_BLEND_MM = 1.5


def infiltration_width(host: np.ndarray, spacing, infiltration_mm: float,
                       stranding: np.ndarray | None = None) -> np.ndarray:
    """The tumour's infiltrative width (mm, float32 of ``host``'s shape) at each voxel: ``infiltration_mm``
    times :data:`INFILTRATION_SCALE` of ``host`` (the tissue class id painted there before the tumour),
    blended over :data:`_WIDTH_BLEND_MM` so that it does not jump between tissues, times
    ``exp(STRANDING_LOG_SD * stranding)`` where a ``stranding`` field of unit root mean square is given
    (clipped at :data:`STRANDING_CLIP`)."""
    scale = np.ones(len(TISSUES), np.float32)
    for name, factor in INFILTRATION_SCALE.items():
        scale[CLASS_ID[name]] = factor
    width = scale[host]
    sigma = [_WIDTH_BLEND_MM / float(s) for s in spacing]
    width = ndimage.gaussian_filter(width, sigma, mode="nearest") * np.float32(infiltration_mm)
    if stranding is not None:
        field = np.clip(stranding, -STRANDING_CLIP, STRANDING_CLIP)
        width *= np.exp(np.float32(STRANDING_LOG_SD) * field).astype(np.float32)
    return width.astype(np.float32, copy=False)


def max_infiltration_mm(infiltration_mm: float) -> float:
    """How far (mm) beyond its surface the tumour's infiltrative edge can reach: half the widest
    :func:`infiltration_width`."""
    widest = max([1.0, *INFILTRATION_SCALE.values()]) * np.exp(STRANDING_LOG_SD * STRANDING_CLIP)
    return float(infiltration_mm * widest / 2.0)


def paint(anat: Anatomy, les: Lesions, grid: Grid, contrast: Contrast,
          modalities: tuple[str, ...], infiltration_mm: float = 0.0,
          stranding: Noise | None = None) -> Painted:
    """Composite every layer, in order, into the noise-free images and the tissue map.

    The tumour's edge is infiltrative: its signal fades into the host tissue over a width centred on
    its surface (a linear ramp of the tumour fraction; the partial-volume ramp of one voxel where that
    is wider), so where the edge lies is a judgement, as in the clinic. The width is
    :func:`infiltration_width`: ``infiltration_mm`` against muscle and mucosa, wider in the fascial
    planes and the skull base's marrow, and irregular where ``stranding`` (a unit field) is given. Its
    label is the surface (the distance's zero), as for every layer."""
    static = [m for m in modalities if m in STATIC]
    images = {m: np.full(grid.shape, contrast.values[m][0], np.float32) for m in static}
    dce = "DCE" in modalities
    weights = None
    texture = None
    if dce:
        weights = np.zeros((len(TISSUES),) + grid.shape, np.float32)
        weights[CLASS_ID["outside"]] = 1.0
        texture = np.zeros(grid.shape, np.float32)
    tissue = np.zeros(grid.shape, np.uint8)
    labels: dict[str, np.ndarray] = {}
    layers = list(anat.layers)
    if les.gtvnd is not None:
        layers.append(Layer("GTVnd", les.gtvnd, "nodemet", "GTVnd"))
    layers.append(Layer("GTVp", les.gtvp, "tumour", "GTVp"))
    if les.necrosis is not None:  # inside the GTVp: painted over the tumour, part of its label
        layers.append(Layer("Necrosis", les.necrosis, "necrosis"))
    # the tumour's view reaches as far as its infiltrative edge can
    pads = [render.pad_for(grid) + (max_infiltration_mm(infiltration_mm) if layer.tissue == "tumour" else 0.0)
            for layer in layers]
    cache = render.Cache()
    root = render.View.covering(grid, anat.pose, [(layer.shape, pad) for layer, pad in zip(layers, pads)])
    half_voxel = max(grid.spacing) / 2.0
    tumour_edge = None
    for layer, pad in zip(layers, pads):
        infiltrates = layer.tissue == "tumour" and infiltration_mm > 0
        res = render.on_grid(layer.shape, grid, anat.pose, pad=pad, cache=cache, root=root)
        if res is None:
            continue
        view, d = res
        sl = view.slices
        f = render.fraction(d, grid.spacing)
        if infiltrates:
            width = infiltration_width(tissue[sl], grid.spacing, infiltration_mm,
                                       None if stranding is None else stranding(view.points))
            ramp = np.clip(np.float32(0.5) - d / width, 0.0, 1.0)
            f = np.where(d > 0, np.maximum(f, ramp), np.minimum(f, ramp))  # the wider of the two ramps
        if layer.tissue == "tumour":
            tumour_edge = (sl, f.astype(np.float32, copy=False), tissue[sl].copy())
        inside = d <= 0
        cid = CLASS_ID[layer.tissue]
        np.copyto(tissue[sl], np.uint8(cid), where=inside)
        tex = les.texture(view.points) if layer.tissue == "tumour" else None
        values = [contrast.values[m][cid] if tex is None else
                  contrast.values[m][cid] + np.float32(TUMOUR_TEXTURE[m] * (contrast.gains.get(m, 1.0))) * tex
                  for m in static]
        for s in render.slabs(f.shape):  # img += f (v - img), in place, a cache-sized slab at a time
            for m, v in zip(static, values):
                img = images[m][sl][s]
                step = np.subtract(v if np.ndim(v) == 0 else v[s], img)
                step *= f[s]
                img += step
        if dce:
            w = weights[(slice(None),) + sl]
            w *= (1 - f)[None]
            w[cid] += f
            if tex is not None:
                texture[sl] = f * tex
        if layer.label:
            if not inside.any():  # too small for this grid: keep the nearest voxel (see render.mask)
                i = np.unravel_index(int(np.argmin(d)), d.shape)
                if d[i] < half_voxel:
                    inside = np.zeros(d.shape, bool)
                    inside[i] = True
            if inside.any():
                full = labels.get(layer.label)
                if full is None:
                    full = labels[layer.label] = np.zeros(grid.shape, bool)
                full[sl] |= inside
    return Painted(images, weights, texture, tissue, labels, tumour_edge)


# ---------------------------------------------------------------------------------- acquisition
def bias_field(rng: np.random.Generator, grid: Grid, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field, (z, y, x) broadcastable, ~1 +- ``amplitude``: a slow in-plane
    2D field times a slow profile along z, functions of world mm (the same at every grid size)."""
    nz = Noise(rng, amplitude * 0.4, 400.0, 3)
    nxy = Noise(rng, amplitude * 0.8, 350.0, 4)
    z = grid.axis(0).astype(np.float32)
    y = grid.axis(1).astype(np.float32)[:, None]
    x = grid.axis(2).astype(np.float32)[None, :]
    zero = np.float32(0.0)
    fz = np.exp(nz((z, zero, zero)))
    fxy = np.exp(nxy((zero, y, x)))
    return fz[:, None, None].astype(np.float32), fxy[None].astype(np.float32)


_CHUNK = 1 << 20  # voxels per noise draw: small buffers, and a fixed split keeps it deterministic


def _chunks(img: np.ndarray):
    flat = img.reshape(-1)
    for a in range(0, flat.size, _CHUNK):
        yield flat[a:a + _CHUNK]


def _normal_table() -> np.ndarray:
    q = special.ndtri((np.arange(1 << 16) + 0.5) / (1 << 16))
    return (q / q.std()).astype(np.float32)


#: Standard normal values at the centres of 2**16 equal-probability bins, scaled to unit variance: the
#: ``table`` noise looks one up by 16 random bits, a quarter of the cost of numpy's ``standard_normal``
#: (one core: 54 against 194 ms per 25 M values). Its tails stop at 4.3 sd, where a normal
#: variate's chance is 1.5e-5; the images are rounded to whole numbers after it (the gpu preset).
NORMAL_TABLE = _normal_table()


def _table_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 16-bit table indices: four per 64-bit draw of ``rng``'s bit generator, read
    little-endian so that every machine draws the same values."""
    return rng.bit_generator.random_raw(-(-n // 4)).astype("<u8", copy=False).view("<u2")[:n]


#: Values looked up and added at once: the buffer stays in a core's cache (the draws do not depend on it).
_PIECE = 1 << 16


def _pieces(part: np.ndarray, bits: np.ndarray, table: np.ndarray, buf: np.ndarray):
    """``(piece of part, table entries chosen by the matching piece of bits)``, :data:`_PIECE` at a time,
    into ``buf``. "wrap" takes the same entries as plain indexing (every 16-bit index is in range)
    without its bounds checks, in two thirds of the time."""
    for a in range(0, part.size, _PIECE):
        idx = bits[a:a + _PIECE]
        yield part[a:a + _PIECE], np.take(table, idx, out=buf[:idx.size], mode="wrap")


def gaussian(rng: np.random.Generator, img: np.ndarray, sd: float, table: bool = False) -> np.ndarray:
    """Add Gaussian noise of sd ``sd`` to ``img`` (C-contiguous float32) in place; ``table``: drawn
    from :data:`NORMAL_TABLE` (other values than numpy's normal draws for the same seed)."""
    sd = np.float32(sd)
    if table:
        scaled = NORMAL_TABLE * sd
        buf = np.empty(_PIECE, np.float32)
        for part in _chunks(img):
            for piece, noise in _pieces(part, _table_bits(rng, part.size), scaled, buf):
                piece += noise
        return img
    for part in _chunks(img):
        buf = rng.standard_normal(part.size, dtype=np.float32)
        buf *= sd
        part += buf
    return img


def rician(rng: np.random.Generator, img: np.ndarray, sd: float, table: bool = False) -> np.ndarray:
    """Magnitude of ``img`` plus complex Gaussian noise of sd ``sd`` per channel, in place; ``table``
    as for :func:`gaussian`."""
    sd = np.float32(sd)
    if table:
        scaled = NORMAL_TABLE * sd
        squared = scaled * scaled
        buf, buf2 = np.empty(_PIECE, np.float32), np.empty(_PIECE, np.float32)
        for part in _chunks(img):
            real = _table_bits(rng, part.size)  # the real parts' bits, then the imaginary parts'
            imaginary = _table_bits(rng, part.size)
            for (piece, noise), (_, square) in zip(_pieces(part, real, scaled, buf),
                                                   _pieces(part, imaginary, squared, buf2)):
                piece += noise
                np.square(piece, out=piece)
                piece += square
                np.sqrt(piece, out=piece)
        return img
    for part in _chunks(img):
        buf = rng.standard_normal(part.size, dtype=np.float32)
        buf *= sd
        part += buf
        np.square(part, out=part)
        rng.standard_normal(out=buf, dtype=np.float32)
        buf *= sd
        np.square(buf, out=buf)
        part += buf
        np.sqrt(part, out=part)
    return img


def mix(curves: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``curves @ weights`` ((frames, classes) by (classes, voxels), float32) summed class by class in
    order with numpy's elementwise operations, a slab of voxels at a time: the same bits at every thread
    count, which a BLAS product does not promise (its split of the work, and so its order of summation,
    follows the number of threads). Weights and curves are not negative, so a class absent from a slab
    adds +0 and is skipped."""
    n_frames = curves.shape[0]
    out = np.empty((n_frames, weights.shape[1]), np.float32)
    term = np.empty(min(weights.shape[1], render.SLAB_VOXELS), np.float32)
    for a in range(0, weights.shape[1], render.SLAB_VOXELS):
        w = weights[:, a:a + render.SLAB_VOXELS]
        t = term[:w.shape[1]]
        present = [c for c in np.flatnonzero(w.any(axis=1)) if c > 0]
        for i in range(n_frames):
            o = np.multiply(w[0], curves[i, 0], out=out[i, a:a + w.shape[1]])
            for c in present:
                o += np.multiply(w[c], curves[i, c], out=t)
    return out


def acquire(painted: Painted, contrast: Contrast, grid: Grid, settings: ScannerSettings,
            streams: dict[str, np.random.Generator], modalities: tuple[str, ...],
            table_noise: bool = False) -> dict[str, np.ndarray]:
    """Apply each scanner's bias and noise; returns channel name -> float32 (z, y, x). ``table_noise``:
    the noise is drawn from :data:`NORMAL_TABLE` (see :func:`gaussian`)."""
    out: dict[str, np.ndarray] = {}
    muscle = CLASS_ID["muscle"]
    for m in modalities:
        rng = streams[m]
        if m in HU_CHANNELS:
            img = gaussian(rng, painted.images[m], settings.ct_noise_hu, table_noise)
            out[m] = np.clip(img, -1024.0, 3071.0, out=img)
        elif m in ("T1", "T2", "CET1"):
            img = painted.images[m]
            fz, fxy = bias_field(rng, grid, settings.bias_field)
            img *= fz
            img *= fxy
            sd = settings.mri_noise * float(contrast.values["T1"][muscle])
            out[m] = rician(rng, img, sd, table_noise)
    if "DCE" in modalities:
        rng = streams["DCE"]
        curves = class_curves(settings, contrast.kinetics).astype(np.float32)  # (T, C)
        frames = mix(curves, painted.weights.reshape(len(TISSUES), -1))
        frames = frames.reshape((settings.dce_frames,) + grid.shape)
        tumour = curves[:, CLASS_ID["tumour"]]
        frames += (np.float32(0.05) * tumour)[:, None, None, None] * painted.texture[None]
        fz, fxy = bias_field(rng, grid, settings.bias_field)
        frames *= fz[None]
        frames *= fxy[None]
        rician(rng, frames, settings.dce_noise * float(curves[0, muscle]), table_noise)
        for i in range(settings.dce_frames):
            out[f"DCE_{i:03d}"] = frames[i]
    return out
