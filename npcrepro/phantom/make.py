"""Build one virtual patient as a :class:`~npcrepro.datasets.case.Case`, or a whole dataset."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from npcrepro.datasets.case import Case
from npcrepro.datasets.format import Dataset, write_dataset
from npcrepro.errors import ParameterError
from npcrepro.paths import env_count
from npcrepro.phantom import anatomy, lesions, raters, render, scanners
from npcrepro.phantom.profiles import resolve
from npcrepro.phantom.sdf import Noise
from npcrepro.phantom.tissues import CLASS_ID, TISSUES

#: Version of the generator; bump when the same seed would give different arrays. A cohort also
#: records :func:`generator_fingerprint`, which changes with any edit of the code that writes it.
#: (Adding the CECT channel kept version 1: every earlier channel is bit-identical for the same seed;
#: a cached cohort without CECT differs in fingerprint and ``modalities``, so it is made again.
#: Version 2: the raters' consensus became GTVp; the tumour's texture, T2 signal, infiltrative edge and
#: necrotic core changed. Version 3: the raters share part of their misreading of a faint edge
#: (``rater_shared_mm``), so the consensus GTVp and every rater moved; the images are those of version 2.
#: Version 4: the infiltrative edge is wider in the fascial planes and the skull base's marrow and
#: irregular (:func:`~npcrepro.phantom.scanners.infiltration_width`), so every image and rater moved.
#: Version 5: the gpu preset draws its noise from a table (``table_noise``), so its images moved; the
#: smoke and cpu presets' arrays are those of version 4. Version 6: the DCE frames are summed over the
#: tissue classes in a fixed order (:func:`~npcrepro.phantom.scanners.mix`), not by a BLAS product whose
#: last bits followed the number of threads: 2.5 % of a smoke case's DCE voxels moved, by at most a relative
#: 1e-6 (three float32 rounding steps); every other array is that of version 5.)
GENERATOR_VERSION = 6

_PACKAGE = Path(__file__).resolve().parent.parent
#: The code that decides a cohort's bytes: the whole phantom package, the case model, the dataset
#: writer and image I/O.
GENERATOR_SOURCES: tuple[str, ...] = ("phantom/*.py", "datasets/case.py", "datasets/format.py",
                                      "io.py")

#: Structures a phantom case can carry, in label-map painting order (later ones win where masks
#: overlap in the convenience label map; the per-structure masks keep every overlap).
#:
#: Tissue masks (the tissue visible at the voxel centre, for contrast measurements): ``Body``
#: (the skin outline, everything inside it), ``Fat``, ``Muscle``, ``Bone`` (cortex and marrow),
#: ``Airway`` (air inside the body: pharynx, nasal cavity, sinuses), ``Mucosa`` (mucosa and adenoid
#: lymphoid tissue), ``Brain``, ``Vessels`` (carotid arteries, jugular veins).
#: Targets: ``CTVnd``, ``CTVp``, ``GTVp_truth`` (the tumour the images were rendered from, which no
#: clinic has), ``GTVp_rater1``... (the observers of :mod:`npcrepro.phantom.raters`), ``GTVnd``
#: (absent when N0), ``GTVp`` (the raters' majority vote: the reference every chapter scores).
#: Organs at risk (luo2020's set): ``Parotid_L/R``, ``Mandible_L/R``, ``Brainstem``, ``SpinalCord``,
#: ``Eye_L/R``, ``OpticNerve_L/R``, ``Chiasm``. L/R are the patient's sides (``_L`` at larger x).
STRUCTURES: tuple[str, ...] = (
    "Body", "Fat", "Muscle", "Bone", "Airway", "Mucosa", "Brain", "Vessels",
    "CTVnd", "CTVp", "GTVp_truth", *(f"GTVp_rater{i + 1}" for i in range(raters.N_RATERS)),
    "Parotid_L", "Parotid_R", "Mandible_L", "Mandible_R", "Brainstem", "SpinalCord",
    "Eye_L", "Eye_R", "OpticNerve_L", "OpticNerve_R", "Chiasm",
    "GTVnd", "GTVp",
)
#: The raters' GTVp structures, in order.
RATERS: tuple[str, ...] = tuple(f"GTVp_rater{i + 1}" for i in range(raters.N_RATERS))
ORGANS = ("Parotid_L", "Parotid_R", "Mandible_L", "Mandible_R", "Brainstem", "SpinalCord",
          "Eye_L", "Eye_R", "OpticNerve_L", "OpticNerve_R", "Chiasm")
#: Organs no tumour enters (:mod:`npcrepro.phantom.lesions`), which no rater contours either.
_NEVER_ENTERED = ("Brainstem", "SpinalCord", "Eye_L", "Eye_R", "OpticNerve_L", "OpticNerve_R", "Chiasm")
_TISSUE_LABELS = {"Fat": ("fat",), "Muscle": ("muscle",), "Bone": ("cortex", "marrow"),
                  "Airway": ("air",), "Mucosa": ("mucosa", "adenoid"), "Brain": ("brain",),
                  "Vessels": ("vessel",)}
# Independent random streams per concern, so that e.g. rendering fewer modalities leaves the
# anatomy, the lesions and the other modalities' noise unchanged. A new stream is appended at the end
# (stream i is seeded with spawn key i), so every earlier stream, and what it draws, stays the same.
_STREAMS = ("anatomy", "lesion", "rater", "contrast", "CT", "T1", "T2", "CET1", "DCE", "CECT", "reading",
            "stranding")


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a cohort drawn with ``seed`` (a 63-bit integer)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def _streams(seed: int) -> dict[str, np.random.Generator]:
    return {name: np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,)))
            for i, name in enumerate(_STREAMS)}


def channels_for(modalities, dce_frames: int) -> list[str]:
    """Channel names in dataset order for ``modalities``."""
    out = [m for m in scanners.STATIC if m in modalities]
    if "DCE" in modalities:
        out += [f"DCE_{i:03d}" for i in range(dce_frames)]
    return out


def make_case(seed: int, **params) -> Case:
    """Render one virtual NPC patient.

    Parameters
    ----------
    seed : int
        Non-negative; the same seed and parameters give the same arrays, bit for bit.
    **params
        See :data:`npcrepro.phantom.profiles.DEFAULTS`: ``preset`` (``"smoke"``, ``"cpu"``,
        ``"gpu"``), ``shape``/``spacing``/``center`` (override the preset's grid, (z, y, x), mm),
        ``modalities`` (subset of CT, T1, T2, CET1, CECT, DCE; default the five static ones), ``t_stage``
        / ``n_stage`` (e.g. ``"T3"``/``3``; default drawn), margins, the raters' jitter, the tumour's
        infiltrative edge, ``integer_images`` (round every image to whole numbers, as scanners store
        them; default the preset's: the ``gpu`` preset's are, so that they are written as int16),
        ``table_noise`` (draw the noise from :data:`~npcrepro.phantom.scanners.NORMAL_TABLE`, a third of
        the time; default the preset's: the ``gpu`` preset's is), and
        scanner settings (:class:`~npcrepro.phantom.scanners.ScannerSettings`).

    Returns
    -------
    Case
        ``images``: float32 (z, y, x) per channel (``CT`` and ``CECT`` in HU; ``T1``, ``T2``, ``CET1`` and
        ``DCE_000``... in arbitrary units); ``labels``: bool (z, y, x) per structure of
        :data:`STRUCTURES` present on the grid; spacing/origin in mm (identity direction);
        ``meta``: T and N stage, volumes (cm3), seed, parameters, scanner settings, lesion facts.

    Raises
    ------
    ParameterError
        Unknown parameter name or bad value.

    Notes
    -----
    Cost, one CPU thread: about 0.6 s at the ``cpu`` preset (five static channels), 3-4 s at the ``gpu``
    preset (see ``benchmarks/bench_phantom.py``). DCE keeps every frame in memory
    plus one tissue-fraction volume per tissue class (~20 volumes): fine for li2018's
    144 x 144 x 20 grid or the ``cpu`` preset, several GB at the ``gpu`` preset.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    p = resolve(params)
    streams = _streams(int(seed))
    anat = anatomy.build(streams["anatomy"])
    les = lesions.build(streams["lesion"], anat, t_stage=p["t_stage"], n_stage=p["n_stage"],
                        ctv_margin_mm=p["ctv_margin_mm"], ctvnd_margin_mm=p["ctvnd_margin_mm"])
    contrast = scanners.draw_contrast(streams["contrast"])
    grid = render.Grid.centred(p["shape"], p["spacing"], p["center"])
    settings = scanners.ScannerSettings(**{k: p[k] for k in scanners.ScannerSettings().to_dict()})
    stranding = lesions.unit_rms(Noise(streams["stranding"], 1.0, scanners.STRANDING_WAVELENGTH_MM, 12))
    painted = scanners.paint(anat, les, grid, contrast, p["modalities"], p["infiltration_mm"], stranding)
    images = scanners.acquire(painted, contrast, grid, settings, streams, p["modalities"], p["table_noise"])
    if p["integer_images"]:  # whole HU and magnitudes, as a scanner stores them (int16 on disk)
        for img in images.values():
            np.rint(img, out=img)

    labels: dict[str, np.ndarray] = {}
    body = painted.labels.get("Body")
    if body is not None:
        labels["Body"] = body
    for name, classes in _TISSUE_LABELS.items():
        m = painted.tissue == CLASS_ID[classes[0]]  # compared, not looked up: a third of the time
        for c in classes[1:]:
            m |= painted.tissue == CLASS_ID[c]
        if m.any():
            labels[name] = m
    for name in ("CTVnd", "CTVp"):
        m = render.mask(les.ctvnd if name == "CTVnd" else les.ctvp, grid, anat.pose)
        if m.any():
            labels[name] = m
    for name in ORGANS + ("GTVnd",):
        if name in painted.labels:
            labels[name] = painted.labels[name]
    truth = painted.labels.get("GTVp")
    rater_facts: dict = {}
    if truth is not None:
        # raters contour neither air nor the organs the tumour never enters
        allowed = (body if body is not None else np.ones(grid.shape, bool)) & ~labels.get("Airway", False)
        for organ in _NEVER_ENTERED:
            if organ in labels:
                allowed &= ~labels[organ]
        drawn, consensus, rater_facts = raters.observe(
            streams["rater"], truth, painted.tissue, grid.spacing, allowed, jitter_mm=p["rater_jitter_mm"],
            noise_sd=settings.mri_noise * TISSUES["muscle"].t1, shared_mm=p["rater_shared_mm"],
            shared_rng=streams["reading"], tumour_edge=painted.tumour_edge)
        labels["GTVp_truth"] = truth
        labels.update({k: m for k, m in zip(RATERS, drawn) if m.any()})
        if consensus.any():
            labels["GTVp"] = consensus
            if "CTVp" in labels:  # a CTV holds its GTV
                labels["CTVp"] = labels["CTVp"] | consensus
    vox_cm3 = grid.voxel_mm3 / 1000.0
    volumes = {k: round(float(np.count_nonzero(labels[k])) * vox_cm3, 3)
               for k in ("GTVp", "GTVp_truth", "GTVnd", "CTVp", "CTVnd", *RATERS) if k in labels}
    name = p["name"] or f"phantom_{seed}"
    meta = {
        "source": "phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "t_stage": f"T{les.t_stage}",
        "n_stage": f"N{les.n_stage}",
        "tumour_side": les.side,
        "volumes_cm3": volumes,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()},
        "scanner": {**settings.to_dict(), "gains": contrast.gains,
                    "dce_bolus_time_s": settings.dce_bolus_frame * settings.dce_interval_s,
                    **contrast.facts},
        "anatomy": anat.facts,
        "lesions": les.facts,
        "raters": rater_facts,
        "spacing_known": True,
    }
    return Case(name, images, labels, grid.spacing, grid.origin, np.eye(3), meta)


def iter_cases(n_cases: int, seed: int, first: int = 0, **params) -> Iterator[Case]:
    """Cases ``npc_000``... (from ``npc_<first>``) of a cohort (lazily, one at a time)."""
    for make in case_factories(n_cases, seed, first, **params):
        yield make()


def case_factories(n_cases: int, seed: int, first: int = 0, **params) -> list[functools.partial]:
    """One picklable zero-argument callable per case of a cohort, each making that case: what
    :func:`generate` hands to worker processes. Case ``i`` is patient ``first + i`` of the population
    drawn with ``seed`` (named ``npc_<first + i>``, seeded :func:`case_seed` ``(seed, first + i)``):
    cohorts with ranges of patients that do not overlap share no patient."""
    return [functools.partial(make_case, case_seed(seed, first + i), name=f"npc_{first + i:03d}", **params)
            for i in range(n_cases)]


@functools.lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """SHA-256 (16 hex digits) of :data:`GENERATOR_SOURCES`: names the code that made a cohort,
    so a cache written by other code is never taken for this code's output."""
    h = hashlib.sha256()
    for pattern in GENERATOR_SOURCES:
        for path in sorted(_PACKAGE.glob(pattern)):
            h.update(path.relative_to(_PACKAGE).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cohort_record(n_cases: int, seed: int, preset: str = "cpu", first: int = 0, **params) -> dict:
    """What decides a cohort's bytes, as :func:`generate` stores it in ``dataset.json``
    (``npcrepro.extra``): generator version and fingerprint, number of cases, seed, first patient
    (where not 0), preset and every resolved :func:`make_case` parameter. Two cohorts with equal
    records are the same bytes."""
    p = resolve({"preset": preset, **params})
    return {"generator": "npcrepro.phantom", "generator_version": GENERATOR_VERSION,
            "generator_fingerprint": generator_fingerprint(), "n_cases": int(n_cases),
            "seed": int(seed), **({"first": int(first)} if first else {}), "preset": preset,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}}


#: Cases of at least this many voxels are made in parallel by default: spawning a worker costs about
#: 2 s (it imports torch), more than a whole cpu-preset case (0.5 M voxels) takes to make and write,
#: while a gpu-preset case (25 M voxels) takes about 4 s on one core.
PARALLEL_VOXELS = 4 * 2**20


def default_workers(n_cases: int, shape) -> int:
    """Processes :func:`generate` uses when not told: ``$NPCREPRO_DATA_WORKERS``, else one per core
    (at most one per case) for cases of :data:`PARALLEL_VOXELS` or more, else 1."""
    env = env_count("NPCREPRO_DATA_WORKERS", minimum=1)
    if env is not None:
        return min(env, n_cases)
    if int(np.prod(shape)) < PARALLEL_VOXELS:
        return 1
    return max(1, min(os.cpu_count() or 1, n_cases))


def generate(out_dir: str | os.PathLike, n_cases: int, seed: int, *, preset: str = "cpu",
             progress: bool = True, overwrite: bool = False, workers: int | None = None,
             first: int = 0, **params) -> Dataset:
    """Write a phantom cohort as a dataset (nnU-Net v2 raw layout + one mask per structure).

    Parameters
    ----------
    out_dir : path
        Target folder (must be empty or absent unless ``overwrite``).
    n_cases : int
        Number of virtual patients (``npc_000``, ``npc_001``..., from ``npc_<first>``; case ``i``
        uses :func:`case_seed` ``(seed, first + i)``).
    seed : int
        Cohort seed: same seed, same bytes.
    first : int
        Index of the first patient (``npc_<first>``...): cohorts of one seed whose patient ranges do
        not overlap share no patient (the development and evaluation cohorts of
        :data:`npcrepro.profiles.COHORTS`).
    preset : str
        ``"smoke"``, ``"cpu"`` or ``"gpu"`` (see :data:`~npcrepro.phantom.profiles.PRESETS`).
    workers : int, optional
        Processes that make and write cases at once (default: :func:`default_workers`). The
        bytes do not depend on it.
    **params
        Any :func:`make_case` parameter.

    Returns
    -------
    Dataset
        The opened dataset: channels CT, T1, T2, CET1, CECT (those in ``modalities``; and
        DCE_000... when ``"DCE"`` is in it), structures :data:`STRUCTURES`.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ParameterError(f"n_cases must be a positive integer, got {n_cases!r}")
    if "name" in params:
        raise ParameterError("name is set per case by generate (npc_000, ...); do not pass it")
    p = resolve({"preset": preset, **params})
    channels = channels_for(p["modalities"], p["dce_frames"])
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
        raise ParameterError(f"first must be a non-negative integer, got {first!r}")
    extra = cohort_record(n_cases, seed, preset, first, **params)
    if workers is None:
        workers = default_workers(n_cases, p["shape"])
    which = f"patients {first}-{first + n_cases - 1} of seed {seed}" if first else f"seed {seed}"
    return write_dataset(out_dir, case_factories(n_cases, seed, first, preset=preset, **params),
                         channels=channels, structures=STRUCTURES, name=f"npc-phantom-{preset}",
                         description=f"NPC digital phantom, {n_cases} virtual patients, {which}, "
                                     f"preset {preset}", source="phantom", extra=extra,
                         overwrite=overwrite, progress=progress, workers=workers)
