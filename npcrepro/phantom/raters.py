"""The phantom's observers: several raters who contour the primary tumour (GTVp) and disagree most
where its edge is faint, and their consensus, the book's reference.

A real GTVp is what physicians drew, not what the tumour is: guo2021 reports two physicians agreeing
at DSC 0.642, and they disagree where the tumour fades into tissue of a similar signal rather than
where it meets fat, air or bone (assumed here, as the boundary-dependent model below states). The
phantom keeps the tumour it rendered (``GTVp_truth``, which no clinic has) and draws
:data:`N_RATERS` observers from it (:func:`observe`):

* how clearly a rater sees the edge at each point: :func:`edge_clarity` of a noise-free "reading
  image", each tissue's distance from the tumour's signal as a rater reading T1, T2 and CET1 side by
  side sees it (:func:`distinguishability`), mixed with the tumour's where the tumour fades into it
  (:func:`reading_image`: a wide infiltrative edge, as in fat and marrow, reads faint), so the raters
  do not depend on which channels a cohort renders;
* each rater moves the edge by a habit of their own and a smooth displacement, both scaled by how
  faint the edge is there (:func:`boundary_raters`, a boundary-dependent perturbation model) and
  by at least ``floor`` of it on the clearest edge;
* a misreading the raters share (``rater_shared_mm``, 4 mm where the edge is invisible): one more smooth
  displacement, the same for every rater and scaled by the same faintness. Raters who read one image
  by one protocol err alike where it shows nothing, so their consensus keeps that part of their error,
  and no network can recover it from the image either. Without it the consensus was the rendered
  tumour in all but name (DSC 0.94 between them), a function of the image that no clinical contour is,
  and networks scored against it 0.08-0.10 above the raters' own agreement; with it, the best
  leaderboard network of a development run lands 0.02 above that agreement (the data page's
  development record);
* slice-by-slice drawing at the ends: with probability 0.4 each, a rater leaves out the most
  superior slice, and adds one more slice below the inferior end (that end's contour, shrunk);
* the reference ``GTVp`` is their majority vote (:func:`npcrepro.metrics.consensus.majority_vote`),
  and every rater's contour is kept (``GTVp_rater1``...), so a chapter can set its networks beside
  the raters' own agreement.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from npcrepro.errors import DataError, ParameterError
from npcrepro.phantom.tissues import CLASS_ID, MRI_READING, TISSUES, TUMOUR_TEXTURE

#: Observers the phantom draws per patient (``GTVp_rater1``...).
N_RATERS = 3
#: The edge clarity (:func:`edge_clarity` of the reading image) at which a rater's perturbation is
#: half-way between its full size and ``FLOOR`` of it, and that floor on the clearest edge.
#: Chosen with the raters' jitter (``rater_jitter_mm`` 4 mm) so that three raters of 12 cpu-preset
#: patients agree at a mean pairwise DSC of 0.75 (generator version 3), inside the range the project set
#: for the phantom (0.65-0.80: guo2021's two physicians agree at 0.642, and the best networks of the
#: SegRap2023 and HNTS-MRG 2024 challenges reach about their physicians' agreement). At version 4, whose
#: raters read the infiltrative edge as painted, the same 12 patients agree at 0.70 (0.71 with the
#: edge as wide everywhere). The data chapter measures it on the cohort the book reports.
CLEAR_CNR = 5.0
FLOOR = 0.3


# ----------------------------------------------------------------------------------- several raters
def edge_clarity(image: np.ndarray, mask: np.ndarray, spacing, *, window_mm: float = 3.0,
                 noise_sd: float | None = None) -> np.ndarray:
    """How clearly ``image`` shows the edge of ``mask`` around each voxel: the local contrast between
    the mask's inside and outside (Gaussian-weighted means over ``window_mm``, normalised
    convolution) over the image noise (``noise_sd``, default a robust estimate: 1.4826 x the median
    absolute deviation of the image minus its local mean inside the mask). A contrast-to-noise
    ratio, float32 of the image's shape; meaningful near the edge."""
    img = np.asarray(image, np.float32)
    m = np.asarray(mask, bool)
    if img.shape != m.shape:
        raise DataError(f"edge_clarity: image {img.shape} and mask {m.shape} differ in shape")
    if not m.any() or m.all():
        return np.zeros(img.shape, np.float32)
    sigma = [window_mm / float(s) for s in np.broadcast_to(np.asarray(spacing, float), (img.ndim,))]
    inside, outside = m.astype(np.float32), (~m).astype(np.float32)
    w_in, w_out = ndimage.gaussian_filter(inside, sigma), ndimage.gaussian_filter(outside, sigma)
    mean_in = ndimage.gaussian_filter(img * inside, sigma) / np.maximum(w_in, 1e-6)
    mean_out = ndimage.gaussian_filter(img * outside, sigma) / np.maximum(w_out, 1e-6)
    if noise_sd is None:
        resid = (img - mean_in)[m]
        noise_sd = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    return (np.abs(mean_in - mean_out) / max(float(noise_sd), 1e-6)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape, spacing, wavelength_mm: float) -> np.ndarray:
    """A smooth random field of unit root-mean-square (white noise low-passed at ``wavelength_mm``)."""
    sigma = [wavelength_mm / (2 * np.pi) / float(s) for s in spacing]
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / max(float(np.sqrt(np.mean(f.astype(np.float64) ** 2))), 1e-12)


def boundary_raters(rng: np.random.Generator, mask: np.ndarray, spacing, clarity: np.ndarray | None = None, *,
                    n_raters: int = 3, jitter_mm: float = 3.0, clear_cnr: float = 3.0,
                    wavelength_mm: float = 15.0, floor: float = 0.0, shared_mm: float = 0.0,
                    shared_rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], dict]:
    """``n_raters`` observers' contours of ``mask`` who disagree most where its edge is faint.

    Each rater moves the edge along its normal by a habit of their own (``bias`` mm wider or
    tighter, normal with sd 0.4 x ``jitter_mm``) plus a smooth displacement (a random field of
    wavelength ``wavelength_mm`` and ``jitter_mm`` root mean square), both scaled by how faint the
    edge is there (:func:`edge_clarity`): ``floor + (1 - floor) / (1 + (clarity / clear_cnr)^2)``, 1
    where the edge is invisible, half-way at a contrast-to-noise of ``clear_cnr`` and ``floor`` on
    the clearest edge. This is the
    boundary-dependent perturbation model of inter-observer variability: raters agree on edges
    they can see and spread where the tumour fades into muscle. ``clarity`` None: every edge
    equally faint. ``shared_mm``: the root mean square of one more smooth displacement, the same for
    every rater (drawn from ``shared_rng``, default ``rng``) and scaled by the same faintness: the
    misreading of a faint edge that the raters share, which their consensus keeps and no image shows.
    The signed distance of ``mask`` (mm, on its grid) is displaced and thresholded.

    Returns (the raters' bool masks, facts: each rater's bias in mm and the mean amplitude on the
    edge)."""
    m = np.asarray(mask, bool)
    sp = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, float), (m.ndim,)))
    if not 0.0 <= float(floor) <= 1.0:
        raise ParameterError(f"boundary_raters: floor must be in [0, 1], got {floor}")
    if int(n_raters) < 1:
        raise ParameterError(f"boundary_raters: n_raters must be at least 1, got {n_raters}")
    if shared_mm < 0:
        raise ParameterError(f"boundary_raters: shared_mm must be at least 0, got {shared_mm}")
    if clarity is not None and np.shape(clarity) != m.shape:
        raise DataError(f"boundary_raters: clarity {np.shape(clarity)} and mask {m.shape} differ in shape")
    if not m.any() or jitter_mm <= 0:
        return [m.copy() for _ in range(int(n_raters))], {"bias_mm": [0.0] * int(n_raters),
                                                          "edge_amplitude_mm": 0.0}
    # the mask's neighbourhood, as far as any rater can reach
    reach = 4 * (jitter_mm + shared_mm) + 5
    zs = np.nonzero(m)
    box = tuple(slice(max(0, int(a.min() - reach / s) - 1), min(n, int(a.max() + reach / s) + 2))
                for a, s, n in zip(zs, sp, m.shape))
    sub = m[box]
    sdf = (ndimage.distance_transform_edt(~sub, sampling=sp) - ndimage.distance_transform_edt(sub, sampling=sp))
    faint = (np.ones(sub.shape, np.float32) if clarity is None
             else 1.0 / (1.0 + (np.asarray(clarity, np.float32)[box] / float(clear_cnr)) ** 2))
    faint = np.float32(floor) + np.float32(1.0 - floor) * faint
    amp = float(jitter_mm) * faint
    edge = np.abs(sdf) <= max(sp)
    if shared_mm > 0:  # drawn before the raters, from its own stream: their draws do not move
        sdf = sdf - float(shared_mm) * faint * _smooth_noise(shared_rng or rng, sub.shape, sp, wavelength_mm)
    out, biases = [], []
    for _ in range(int(n_raters)):
        bias = float(np.clip(rng.standard_normal(), -2.5, 2.5) * 0.4 * jitter_mm)
        field = _smooth_noise(rng, sub.shape, sp, wavelength_mm)
        full = np.zeros(m.shape, bool)
        full[box] = sdf - (bias * faint + amp * field) <= 0
        out.append(full)
        biases.append(round(bias, 3))
    return out, {"bias_mm": biases, "edge_amplitude_mm": round(float(amp[edge].mean()), 3)}


# ----------------------------------------------------------------------------------- the cohort's raters
def distinguishability(noise_sd: float) -> np.ndarray:
    """Per tissue class id: how far the tissue's signal lies from the tumour's for a rater reading
    :data:`~npcrepro.phantom.tissues.MRI_READING` side by side, the largest over those sequences of
    ``|tissue - tumour| / sqrt(texture^2 + noise_sd^2)`` (the tumour's texture sd and the image
    noise sd, a.u.). 0 for the tumour itself; float32 (classes,)."""
    tumour = TISSUES["tumour"]
    out = np.zeros(len(TISSUES), np.float32)
    for cid, t in enumerate(TISSUES.values()):
        out[cid] = max(abs(getattr(t, seq.lower()) - getattr(tumour, seq.lower()))
                       / float(np.hypot(TUMOUR_TEXTURE[seq], noise_sd)) for seq in MRI_READING)
    return out


def reading_image(tissue: np.ndarray, box: tuple[slice, ...], noise_sd: float, tumour_edge=None) -> np.ndarray:
    """The noise-free image a rater reads in ``box`` of the grid: each voxel's :func:`distinguishability`
    from the tumour (float32). Where ``tumour_edge`` (grid slices, the tumour's fraction there, the
    tissue ids beneath it) is given, a voxel of the tumour or of what it fades into mixes the two by
    the fraction, so a wide infiltrative edge reads as faint as it is painted; a necrotic core keeps
    its own value."""
    dist = distinguishability(noise_sd)
    tissue = np.asarray(tissue)
    reading = dist[tissue[box]]
    if tumour_edge is None:
        return reading
    view, frac, host = tumour_edge
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, view))
    if any(s.stop <= s.start for s in inter):
        return reading
    in_view = tuple(slice(s.start - v.start, s.stop - v.start) for s, v in zip(inter, view))
    in_box = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, box))
    f = frac[in_view]
    mixed = f * dist[CLASS_ID["tumour"]] + (1 - f) * dist[host[in_view]]
    keep = (tissue[inter] == CLASS_ID["necrosis"]) | (f <= 0)
    reading[in_box] = np.where(keep, reading[in_box], mixed)
    return reading


def _ends(rng: np.random.Generator, mask: np.ndarray) -> dict:
    """Slice-by-slice drawing at the ends of ``mask`` (in place): the top slice left out and one slice
    added below the bottom, each with probability 0.4."""
    drop_top, add_bottom = bool(rng.random() < 0.4), bool(rng.random() < 0.4)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size:
        if drop_top and zs.size > 2:
            mask[zs[-1]] = False
        if add_bottom and zs[0] > 0:
            mask[zs[0] - 1] = ndimage.binary_erosion(mask[zs[0]], iterations=1)
    return {"dropped_top_slice": drop_top, "added_bottom_slice": add_bottom}


def _extent(m: np.ndarray) -> list[tuple[int, int]]:
    """The first and last index of ``m``'s True voxels along each axis (a 3-D bool array with one):
    from its projections, a hundredth of the time of listing every voxel on a paper-size grid. (Like
    :func:`npcrepro.transforms.bbox`, which the phantom does not import: a cohort's bytes depend only on
    :data:`~npcrepro.phantom.make.GENERATOR_SOURCES`, and its fingerprint only on them.)"""
    zs = np.flatnonzero(m.any(axis=(1, 2)))
    planes = m[zs[0]:zs[-1] + 1]
    ys = np.flatnonzero(planes.any(axis=(0, 2)))
    xs = np.flatnonzero(planes[:, ys[0]:ys[-1] + 1].any(axis=(0, 1)))
    return [(int(a[0]), int(a[-1])) for a in (zs, ys, xs)]


def observe(rng: np.random.Generator, truth: np.ndarray, tissue: np.ndarray, spacing,
            allowed: np.ndarray | None = None,
            *, n_raters: int = N_RATERS, jitter_mm: float = 3.0, clear_cnr: float | None = None,
            floor: float | None = None, noise_sd: float = 13.5, shared_mm: float = 0.0,
            shared_rng: np.random.Generator | None = None,
            tumour_edge=None) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The raters of one patient's tumour (see the module docstring).

    ``truth``: the rendered tumour, bool (z, y, x); ``tissue``: the class id at each voxel centre
    (uint8, same shape); ``spacing`` mm; ``allowed``: the raters draw inside it (None: anywhere);
    ``noise_sd``: the MRI noise (a.u.) that :func:`distinguishability` divides by; ``clear_cnr`` and
    ``floor`` default to :data:`CLEAR_CNR` and :data:`FLOOR`; ``tumour_edge``: the painted edge
    (:attr:`npcrepro.phantom.scanners.Painted.tumour_edge`), so that the reading image fades where the
    tumour does (:func:`reading_image`; None: the tissue map's sharp edge).

    Returns (each rater's bool mask, their majority vote, facts: each rater's bias in mm, the mean
    perturbation amplitude on the edge, the end slices each left out or added, and the raters' mean
    pairwise DSC)."""
    from npcrepro.metrics.consensus import majority_vote, pairwise_dice

    m = np.asarray(truth, bool)
    if not m.any():
        return [m.copy() for _ in range(n_raters)], m.copy(), {}
    sp = tuple(float(s) for s in spacing)
    reach = 4 * (jitter_mm + shared_mm) + 10  # the perturbations' reach plus the clarity window
    box = tuple(slice(max(0, int(lo - reach / s) - 1), min(n, int(hi + reach / s) + 2))
                for (lo, hi), s, n in zip(_extent(m), sp, m.shape))
    reading = reading_image(tissue, box, noise_sd, tumour_edge)
    clarity = edge_clarity(reading, m[box], sp, noise_sd=1.0)
    sub, facts = boundary_raters(rng, m[box], sp, clarity, n_raters=n_raters, jitter_mm=jitter_mm,
                                 clear_cnr=CLEAR_CNR if clear_cnr is None else clear_cnr,
                                 floor=FLOOR if floor is None else floor, shared_mm=shared_mm,
                                 shared_rng=shared_rng)
    # everything below happens in the box (no rater reaches its border, which lies 5 mm beyond the
    # perturbation's reach), then goes onto the full grid
    ends = []
    for r in sub:
        ends.append(_ends(rng, r) if jitter_mm > 0 else {})
        if allowed is not None:
            r &= np.asarray(allowed, bool)[box]
    mean = pairwise_dice(sub)[0] if len(sub) > 1 else 1.0
    facts.update(ends=ends, pairwise_dice=round(mean, 4))

    def full(a: np.ndarray) -> np.ndarray:
        out = np.zeros(m.shape, bool)
        out[box] = a
        return out

    return [full(r) for r in sub], full(majority_vote(sub)), facts
