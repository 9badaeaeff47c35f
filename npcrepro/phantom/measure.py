"""What the phantom's images hold: contrast-to-noise ratios, DCE enhancement curves, overlaps.

These work on any :class:`~npcrepro.datasets.case.Case` with the phantom's structure names, so the
same numbers can be computed on a dataset read back from disk.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage, optimize, special

from npcrepro.datasets.case import Case
from npcrepro.errors import ParameterError
from npcrepro.phantom.make import RATERS

#: Static channels measured by default, in display order (the two CTs side by side).
CHANNELS = ("CT", "CECT", "T1", "T2", "CET1")

#: Default CNR pairs: (column name, structure a, structure b).
CNR_PAIRS = (
    ("tumour vs muscle", "GTVp", "Muscle"),
    ("tumour vs mucosa", "GTVp", "Mucosa"),
    ("tumour vs node", "GTVp", "GTVnd"),
    ("tumour vs fat", "GTVp", "Fat"),
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.count_nonzero(a & b)) / s


def core(mask: np.ndarray, avoid: np.ndarray | None = None, min_voxels: int = 10) -> np.ndarray:
    """The mask away from partial-volume edges: without voxels touching ``avoid`` (26-neighbours),
    then shrunk by one voxel in-plane; each step is skipped when it would leave fewer than
    ``min_voxels`` voxels."""
    mask = np.asarray(mask, bool)
    if avoid is not None and avoid.any():
        clear = mask & ~ndimage.binary_dilation(avoid, structure=np.ones((3, 3, 3), bool))
        if clear.sum() >= min_voxels:
            mask = clear
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(mask, structure=st)
    return eroded if eroded.sum() >= min_voxels else mask


#: The ring :func:`ring_contrast` sets a tumour against: from 1 to 4.5 mm outside its edge (mm).
RING_MM = (1.0, 4.5)


def ring_contrast(image: np.ndarray, mask: np.ndarray, spacing, *, inner_mm: float = RING_MM[0],
                  outer_mm: float = RING_MM[1]) -> dict[str, float] | None:
    """How a tumour stands out from what surrounds it, the same way on a real slice and on the
    phantom (the data chapter's validation): the ring from ``inner_mm`` to ``outer_mm`` outside
    ``mask`` (in-plane 8-neighbour dilations of about that many mm) and the mask's core (one voxel
    in). ``contrast``: |core mean - ring mean| / ring sd, the separation a rater sees against the
    surroundings' variability (tissue mix and noise); ``texture``: core sd / ring sd, how
    heterogeneous the tumour looks beside them. None where the core or the ring has under 10
    pixels. ``image``/``mask`` 2D (y, x) or 3D; ``spacing`` in mm per axis (or one number)."""
    img, m = np.asarray(image, float), np.asarray(mask, bool)
    if img.shape != m.shape:
        raise ParameterError(f"ring_contrast: image {img.shape} and mask {m.shape} differ in shape")
    px = float(np.broadcast_to(np.asarray(spacing, float), (img.ndim,))[-1])
    st = ndimage.generate_binary_structure(2, 2)
    if img.ndim == 3:
        st = np.stack([np.zeros_like(st), st, np.zeros_like(st)])
    grow = [max(1, int(round(mm / px))) for mm in (inner_mm, outer_mm)]
    ring = (ndimage.binary_dilation(m, st, iterations=grow[1]) & ~ndimage.binary_dilation(m, st, iterations=grow[0]))
    kernel = ndimage.binary_erosion(m, st)
    if kernel.sum() < 10 or ring.sum() < 10:
        return None
    t, r = img[kernel], img[ring]
    sd = max(float(r.std()), 1e-12)
    return {"contrast": abs(float(t.mean()) - float(r.mean())) / sd, "texture": float(t.std()) / sd}


#: The signed distances (mm, negative inside) :func:`edge_widths` profiles a boundary over, and its bins.
EDGE_WINDOW_MM = (-5.0, 8.0)
EDGE_BIN_MM = 0.5
#: The widest edge :func:`edge_widths` fits (mm); a fit that reaches it found no edge in the window.
EDGE_MAX_SIGMA_MM = 6.0


def _erf_edge(d, outside, step, shift, sigma):
    """A straight edge blurred by a Gaussian of ``sigma`` mm: ``outside + step`` deep inside, ``outside``
    far out, half-way at signed distance ``shift``."""
    return outside + step * 0.5 * special.erfc((d - shift) / (np.sqrt(2.0) * sigma))


def edge_widths(image: np.ndarray, mask: np.ndarray, pixel_mm: float, *, sectors: int = 12,
                min_step: float = 3.0) -> np.ndarray:
    """How sharp a tumour's edge is, the same way on a real slice and on the phantom: the boundary of
    the 2D ``mask`` (y, x) is cut into ``sectors`` equal angles about its centroid; in each, the mean
    intensity of ``image`` per :data:`EDGE_BIN_MM` bin of signed distance to the boundary (within
    :data:`EDGE_WINDOW_MM`) is fitted by a Gaussian-blurred step (:func:`_erf_edge`), and its sigma
    (mm) kept where the step is at least ``min_step`` times the fit's residual sd (a sector whose
    neighbour looks like the tumour has no edge to measure). The 10-90 % rise is 2.56 sigma. It
    counts everything that widens an edge: infiltration, scanner blur, pixel size, and where the
    contour sits. Exact on a straight blurred edge; a convex outline reads a little sharper (about
    8 % on a disk of 20 mm radius), on real and phantom tumours alike. It needs pixels of about 1 mm or
    finer: on 2 mm pixels a sector has too few pixels per bin and gives no value. ``pixel_mm``: the
    in-plane pixel size. Returns sigmas (mm), one per measured sector."""
    img, m = np.asarray(image, float), np.asarray(mask, bool)
    if img.ndim != 2 or img.shape != m.shape:
        raise ParameterError(f"edge_widths: needs a 2D image and mask of one shape, got {img.shape} and {m.shape}")
    if not m.any() or m.all():
        return np.zeros(0)
    px = float(pixel_mm)
    d = np.where(m, px / 2 - ndimage.distance_transform_edt(m) * px,
                 ndimage.distance_transform_edt(~m) * px - px / 2)
    cy, cx = ndimage.center_of_mass(m)
    yy, xx = np.indices(m.shape)
    sector = np.minimum(((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * sectors).astype(int), sectors - 1)
    edges = np.arange(EDGE_WINDOW_MM[0], EDGE_WINDOW_MM[1] + EDGE_BIN_MM / 2, EDGE_BIN_MM)
    centres = (edges[:-1] + edges[1:]) / 2
    which = np.digitize(d, edges) - 1
    inside_window = (which >= 0) & (which < centres.size)
    out = []
    for s in range(sectors):
        sel = inside_window & (sector == s)
        counts = np.bincount(which[sel], minlength=centres.size)
        sums = np.bincount(which[sel], weights=img[sel], minlength=centres.size)
        ok = counts >= 3
        if ok.sum() < centres.size // 2 or not (ok & (centres < -2)).any() or not (ok & (centres > 4)).any():
            continue
        x, y = centres[ok], sums[ok] / counts[ok]
        start = [y[x > 4].mean(), y[x < -2].mean() - y[x > 4].mean(), 0.0, 1.0]
        bounds = ([-np.inf, -np.inf, -4.0, 0.05], [np.inf, np.inf, 4.0, EDGE_MAX_SIGMA_MM])
        try:
            fit, _ = optimize.curve_fit(_erf_edge, x, y, p0=start, maxfev=4000, bounds=bounds)
        except (RuntimeError, ValueError):
            continue
        noise = max(float(np.std(y - _erf_edge(x, *fit))), 1e-12)
        if abs(fit[1]) >= min_step * noise and fit[3] < EDGE_MAX_SIGMA_MM:   # at the bound: no edge in the window
            out.append(float(fit[3]))
    return np.asarray(out)


def edge_table(cases, channels, structure: str = "GTVp", pixel_mm: float | None = None) -> pd.DataFrame:
    """:func:`edge_widths` of ``structure`` on each case's axial slice of largest cross-section, per
    channel of ``channels`` the case has: one row per measured sector with ``sigma_mm``. ``pixel_mm``
    replaces the cases' in-plane spacing (real slices exported without one)."""
    rows = []
    for case, z, m in _largest_slices(cases, structure):
        px = float(pixel_mm) if pixel_mm else float(case.spacing[-1])
        for ch in [c for c in channels if c in case.images]:
            rows += [{"case": case.name, "channel": ch, "sigma_mm": s} for s in edge_widths(case.images[ch][z], m, px)]
    return pd.DataFrame(rows, columns=["case", "channel", "sigma_mm"])


#: The real NPC T2 slices carry no pixel size: their rings are measured as if a 230 mm field of view
#: spanned the 512 pixels of the export (a usual nasopharyngeal T2 field of view; an assumption).
ASSUMED_T2_PIXEL_MM = 230.0 / 512


def _largest_slices(cases, structure: str):
    """(case, z, the 2D mask of ``structure`` on axial slice z) where its cross-section is largest, for
    each case that has ``structure``."""
    for case in cases:
        m = case.labels.get(structure)
        if m is not None and m.any():
            z = int(np.argmax(m.sum(axis=(1, 2))))
            yield case, z, m[z]


def contrast_table(cases, channels=None, structure: str = "GTVp", pixel_mm: float | None = None) -> pd.DataFrame:
    """:func:`ring_contrast` of ``structure`` on each case's axial slice of largest cross-section, per
    channel (default every channel of :data:`CHANNELS` the case has): one row per (case, channel)
    with ``contrast`` and ``texture``. ``pixel_mm`` replaces the cases' in-plane spacing (real
    slices exported without one). Cases without ``structure`` give no row."""
    rows = []
    for case, z, m in _largest_slices(cases, structure):
        px = float(pixel_mm) if pixel_mm else float(case.spacing[-1])
        for ch in [c for c in (channels or CHANNELS) if c in case.images]:
            r = ring_contrast(case.images[ch][z], m, px)
            if r is not None:
                rows.append({"case": case.name, "channel": ch, **r})
    return pd.DataFrame(rows, columns=["case", "channel", "contrast", "texture"])


def median_iqr(table: pd.DataFrame, by, columns, count: str = "scans") -> pd.DataFrame:
    """Per group ``by`` of ``table`` (one row per case): how many (column ``count``) and each of
    ``columns`` as "median (interquartile range)", two decimals; groups in the table's order."""
    def iqr(s: pd.Series) -> str:
        return f"{s.median():.2f} ({s.quantile(0.25):.2f}–{s.quantile(0.75):.2f})"

    return (table.groupby(by, sort=False)
            .agg(**{count: ("case", "size")}, **{c: (c, iqr) for c in columns}).reset_index())


def contrast_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (``source``, channel) of :func:`contrast_table` rows (a ``source`` column added by the
    caller): how many scans, and contrast and texture as "median (interquartile range)"."""
    return median_iqr(table, ["source", "channel"], ["contrast", "texture"])


def _near(case: Case, ref: str, margin_mm: float) -> np.ndarray:
    """Box around structure ``ref`` grown by ``margin_mm`` (bool, case shape)."""
    out = np.zeros(case.shape, bool)
    idx = np.argwhere(case.labels[ref])
    pad = np.ceil(margin_mm / np.asarray(case.spacing)).astype(int)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = idx.max(0) + pad + 1
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return out


def _peak_channel(case: Case) -> str | None:
    dce = sorted(c for c in case.images if c.startswith("DCE_"))
    if not dce or "GTVp" not in case.labels:
        return None
    curve = dce_curves(case, ("GTVp",))["GTVp"]
    return dce[int(np.argmax(curve.to_numpy()))]


def measure_cnr(case: Case, pairs=CNR_PAIRS, channels=None, margin_mm: float = 40.0) -> pd.DataFrame:
    """Contrast-to-noise ratio between structures, per channel.

    ``CNR = |mean_a - mean_b| / sqrt((sd_a^2 + sd_b^2) / 2)`` over the core voxels
    (:func:`core`: one voxel in from the edge, not touching air, bone or the outside) of each
    structure within ``margin_mm`` of the GTVp's bounding box, so it counts what a segmenter must
    see through locally: noise, bias field, texture, and what partial volume is left. Thin
    structures (mucosa) need a grid finer than about 3 mm in-plane to have core voxels at all.
    ``GTVp`` in a pair is the tumour the images show: ``GTVp_truth`` where the case has it (the
    raters' consensus ``GTVp`` also holds voxels of its surroundings).

    Parameters
    ----------
    case : Case
        A phantom case (structure names of :data:`npcrepro.phantom.STRUCTURES`).
    pairs : sequence of (name, structure_a, structure_b)
    channels : sequence of str, optional
        Default: CT, CECT, T1, T2, CET1 (those present), plus the DCE frame where the tumour peaks.

    Returns
    -------
    DataFrame
        Index: channel; columns: pair names; NaN where a structure is absent (e.g. no node at N0).
    """
    if "GTVp" not in case.labels:
        raise ParameterError(f"case {case.name}: no GTVp; CNR is measured around the tumour")
    if channels is None:
        channels = [c for c in CHANNELS if c in case.images]
        peak = _peak_channel(case)
        if peak:
            channels.append(peak)
    missing = [c for c in channels if c not in case.images]
    if missing:
        raise ParameterError(f"case {case.name}: no channel(s) {missing} "
                             f"(channels: {sorted(case.images)})")
    tumour = "GTVp_truth" if "GTVp_truth" in case.labels else "GTVp"
    pairs = [(name, tumour if a == "GTVp" else a, tumour if b == "GTVp" else b) for name, a, b in pairs]
    near = _near(case, "GTVp", margin_mm)
    # Air and bone are the strongest partial-volume contaminants of thin soft tissues (mucosa).
    avoid = np.zeros(case.shape, bool)
    for s in ("Airway", "Bone"):
        if s in case.labels:
            avoid |= case.labels[s]
    if "Body" in case.labels:
        avoid |= ~case.labels["Body"]
    cores = {}
    for _, a, b in pairs:
        for s in (a, b):
            if s not in cores:
                cores[s] = core(case.labels[s] & near, avoid & ~case.labels[s]) \
                    if s in case.labels else None
    rows = {}
    for c in channels:
        img = case.images[c]
        row = {}
        for name, a, b in pairs:
            ma, mb = cores[a], cores[b]
            if ma is None or mb is None or not ma.any() or not mb.any():
                row[name] = np.nan
                continue
            va, vb = img[ma].astype(float), img[mb].astype(float)
            noise = np.sqrt((va.var() + vb.var()) / 2.0)
            row[name] = abs(va.mean() - vb.mean()) / noise if noise > 0 else np.inf
        rows[c] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "channel"
    return out


def dce_curves(case: Case, structures=("GTVp", "Muscle", "Mucosa", "Vessels")) -> pd.DataFrame:
    """Mean DCE signal per frame inside each structure's core voxels.

    Returns
    -------
    DataFrame
        Index: frame number; a ``time_s`` column (from the case's scanner settings when known) and
        one column per structure present.
    """
    frames = sorted(c for c in case.images if c.startswith("DCE_"))
    if not frames:
        raise ParameterError(f"case {case.name}: no DCE frames (render with modalities including 'DCE')")
    stack = [case.images[f] for f in frames]
    data = {}
    scanner = case.meta.get("scanner", {})
    dt = scanner.get("dce_interval_s")
    data["time_s"] = [int(f[4:]) * dt if dt else np.nan for f in frames]
    for s in structures:
        if s not in case.labels:
            continue
        m = core(case.labels[s])
        data[s] = [float(img[m].mean()) for img in stack]
    out = pd.DataFrame(data, index=[int(f[4:]) for f in frames])
    out.index.name = "frame"
    return out


def survey(dataset, *, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-patient facts and CNRs of a phantom dataset (as written by :func:`generate`).

    Returns
    -------
    cohort : DataFrame
        One row per case: ``T``, ``N``, ``side``, volumes (``GTVp_cm3``, ``GTVnd_cm3``,
        ``CTVp_cm3``, ``CTVnd_cm3``), ``raters_dice`` (the raters' mean pairwise Dice),
        ``rater_vs_reference`` (their mean Dice against the consensus GTVp) and ``reference_vs_truth``
        (Dice of the consensus GTVp against the rendered tumour); NaN where the case has no raters.
    cnr : DataFrame
        Long form: ``case``, ``channel``, ``pair``, ``cnr`` (see :func:`measure_cnr`).
    """
    from npcrepro.metrics.consensus import agreement

    wanted = [s for s in ("GTVp", "GTVp_truth", *RATERS, "GTVnd", "Muscle", "Mucosa", "Fat")
              if s in dataset.structures]
    channels = [c for c in CHANNELS if c in dataset.channels]
    rows, cnr_rows = [], []
    names = dataset.cases
    if progress:
        from npcrepro.paths import progress_bar as tqdm
        names = tqdm(names, desc="measuring", unit="case")
    for name in names:
        case = dataset.load(name, channels=channels, structures=wanted)
        vol = case.meta.get("volumes_cm3", {})
        drawn = [case.labels[k] for k in RATERS if k in case.labels]
        ref, truth = case.labels.get("GTVp"), case.labels.get("GTVp_truth")
        rows.append({
            "case": name, "T": case.meta.get("t_stage"), "N": case.meta.get("n_stage"),
            "side": case.meta.get("tumour_side"),
            **{f"{k}_cm3": vol.get(k, 0.0) for k in ("GTVp", "GTVnd", "CTVp", "CTVnd")},
            **({"raters_dice": a["pairwise_dice"], "rater_vs_reference": a["rater_vs_reference"]}
               if len(drawn) > 1 and ref is not None and (a := agreement(drawn, ref))
               else {"raters_dice": np.nan, "rater_vs_reference": np.nan}),
            "reference_vs_truth": dice(ref, truth) if ref is not None and truth is not None else np.nan,
        })
        table = measure_cnr(case, channels=channels)
        for ch, row in table.iterrows():
            for pair, v in row.items():
                cnr_rows.append({"case": name, "channel": ch, "pair": pair, "cnr": v})
    return pd.DataFrame(rows).set_index("case"), pd.DataFrame(cnr_rows)


#: Organs whose CT values :func:`tissue_values` compares, each as the structure names that make it up
#: (the phantom's sides and OpenKBP's whole mandible alike).
CT_TISSUES = {"Brainstem": ("Brainstem",), "SpinalCord": ("SpinalCord",),
              "Parotid": ("Parotid_L", "Parotid_R"), "Mandible": ("Mandible", "Mandible_L", "Mandible_R")}


def tissue_values(cases, channel: str = "CT", tissues=None, per_case: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Values of ``channel`` inside each tissue of :data:`CT_TISSUES` (or ``tissues``: name -> structure
    names), at most ``per_case`` voxels per case and tissue drawn at random (``seed``): long form
    ``case``, ``tissue``, ``value``; for histograms of a real dataset beside the phantom. Cases without
    the channel or a tissue give no rows for it."""
    rng = np.random.default_rng(seed)
    frames = []
    for case in cases:
        img = case.images.get(channel)
        if img is None:
            continue
        for tissue, names in (tissues or CT_TISSUES).items():
            m = np.zeros(img.shape, bool)
            for n in names:
                if n in case.labels:
                    m |= case.labels[n]
            v = img[m]
            if v.size:
                v = v if v.size <= per_case else rng.choice(v, per_case, replace=False)
                frames.append(pd.DataFrame({"case": case.name, "tissue": tissue, "value": v.astype(float)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["case", "tissue", "value"])


def shape_table(cases, structure: str = "GTVp", pixel_mm: float | None = None) -> pd.DataFrame:
    """The tumour's cross-section where it is largest, per case: ``area_mm2``, ``diameter_mm`` (of the
    circle of that area), ``solidity`` (area over its convex hull's: 1 for a convex outline, lower for a
    lobulated or infiltrative one) and ``eccentricity`` (of the ellipse with the same second moments),
    of its largest connected part. ``pixel_mm`` replaces the cases' in-plane spacing (real slices
    exported without one). Cases without ``structure`` give no row."""
    from skimage.measure import label, regionprops

    rows = []
    for case, _, m in _largest_slices(cases, structure):
        px = (float(pixel_mm),) * 2 if pixel_mm else tuple(float(s) for s in case.spacing[-2:])
        parts = regionprops(label(m))
        r = max(parts, key=lambda p: p.area)
        area = float(r.area) * px[0] * px[1]
        rows.append({"case": case.name, "area_mm2": area, "diameter_mm": 2 * np.sqrt(area / np.pi),
                     "solidity": float(r.solidity), "eccentricity": float(r.eccentricity)})
    return pd.DataFrame(rows, columns=["case", "area_mm2", "diameter_mm", "solidity", "eccentricity"])
