"""Li et al. 2024, "A dataset of primary nasopharyngeal carcinoma MRI with multi-modalities
segmentation" (Zenodo record 10900202, arXiv 2404.03253, CC BY 4.0): 277 patients, T1WI, T2WI and
CE-T1WI DICOM series with one tumour mask per sequence.

Source layout::

    <src>/data/MRI-Segments/NNN/T1WI/*.dcm       one DICOM series per sequence folder
                               NNN/T2WI/*.dcm
                               NNN/CE-T1WI/*.dcm
                               NNN/ROI-T1.nii    tumour mask on the T1WI grid
                               NNN/ROI-T2.nii    ... on the T2WI grid
                               NNN/ROI-CE-T1.nii ... on the CE-T1WI grid

``src`` may be the download root (holding ``data/``), the ``data/`` folder, or ``MRI-Segments``
itself. Folder and file names are matched ignoring case, dashes and underscores; ``.nii.gz`` masks
are accepted too.

Conversion

* Channels ``T1``, ``T2``, ``CET1``, all on the **T1 grid** (as MMFNet, chen2020, registered CET1
  and T2 to T1): T2 and CE-T1 are resampled with :func:`npcrepro.io.resample_to` in scanner
  coordinates (linear; 0 outside their field of view). No registration is done: the three series
  of one session share the scanner frame, and patient motion between them stays.
* Structures ``GTV_T1``, ``GTV_T2``, ``GTV_CET1``: each sequence's mask (> 0), read on its own
  series' grid (its shape must equal the series'), brought to the T1 grid with nearest-neighbour
  resampling.
* ``GTVp``, the label used for training and scoring, is the **CE-T1 mask** by default
  (``gtvp_from="CET1"``): contrast-enhanced T1 is the sequence clinicians use for tumour extent
  (chen2020, Sec. 1, citing Popovtzer et al.), and chen2020 trains on one ground truth per patient
  on the T1 grid. Alternatives: ``"T1"``, ``"T2"``, ``"majority"`` (voxels in at least two of the
  available masks) and ``"union"``. When the chosen mask is missing, the first available of CET1,
  T1, T2 is used; ``meta["GTVp_from"]`` records which.
* A missing ROI file leaves that structure absent (noted in ``meta["missing_masks"]``); a missing
  sequence folder, a mask whose shape differs from its series, a folder with two series, or an
  unreadable file raise :class:`~npcrepro.DataError` naming the path (``convert`` reports the case
  as skipped).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from npcrepro import io
from npcrepro.datasets.case import Case
from npcrepro.errors import DataError, ParameterError

DESCRIPTION = "Li et al. 2024 NPC MRI (T1WI, T2WI, CE-T1WI DICOM + ROI masks), Zenodo 10900202"

#: Channel -> (sequence folder, ROI mask file) as named in the dataset.
SEQUENCES: dict[str, tuple[str, str]] = {
    "T1": ("T1WI", "ROI-T1.nii"),
    "T2": ("T2WI", "ROI-T2.nii"),
    "CET1": ("CE-T1WI", "ROI-CE-T1.nii"),
}
CHANNELS = ["T1", "T2", "CET1"]
STRUCTURES = ["GTV_T1", "GTV_T2", "GTV_CET1", "GTVp"]
GTVP_CHOICES = ("CET1", "T1", "T2", "majority", "union")
_FALLBACK = ("CET1", "T1", "T2")


def _key(name: str) -> str:
    name = re.sub(r"\.nii(\.gz)?$", "", name, flags=re.I)
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _find(folder: Path, wanted: str, *, is_dir: bool) -> Path | None:
    key = _key(wanted)
    for p in sorted(folder.iterdir()):
        if p.is_dir() == is_dir and _key(p.name) == key:
            return p
    return None


def find_root(src: str | Path) -> Path:
    """The ``MRI-Segments`` folder for ``src`` (see module docstring)."""
    src = Path(src)
    for cand in (src / "MRI-Segments", src / "data" / "MRI-Segments"):
        if cand.is_dir():
            return cand
    if _key(src.name) == _key("MRI-Segments"):
        return src
    # A folder of patient folders, named otherwise.
    if src.is_dir() and any(p.is_dir() and _find(p, "T1WI", is_dir=True) for p in src.iterdir()):
        return src
    raise DataError(f"{src}: not a Li-2024 NPC MRI folder (expected MRI-Segments/NNN/T1WI, "
                    "T2WI, CE-T1WI with ROI-*.nii masks, under src, src/MRI-Segments or "
                    "src/data/MRI-Segments)")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_patients(src: str | Path) -> list[Path]:
    """Patient folders (every non-hidden sub-folder of ``MRI-Segments``), in numeric order."""
    root = find_root(src)
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: _natural_key(p.name))


def _read_series(patient: Path, channel: str) -> io.Volume:
    folder_name = SEQUENCES[channel][0]
    folder = _find(patient, folder_name, is_dir=True)
    if folder is None:
        raise DataError(f"{patient / folder_name}: missing sequence folder ({channel}) of patient "
                        f"{patient.name}")
    try:
        vol = io.read(folder)
    except DataError as exc:
        raise DataError(f"{exc} (Li-2024 patient {patient.name}, sequence {folder.name})") from None
    if vol.ndim != 3:
        raise DataError(f"{folder}: expected a 3D series, got shape {vol.shape}")
    return vol


def _read_mask(patient: Path, channel: str, series: io.Volume, notes: list[str]) -> io.Volume | None:
    wanted = SEQUENCES[channel][1]
    path = _find(patient, wanted, is_dir=False)
    if path is None:
        seq_folder = _find(patient, SEQUENCES[channel][0], is_dir=True)
        path = _find(seq_folder, wanted, is_dir=False) if seq_folder is not None else None
    if path is None:
        return None
    vol = io.read(path)
    if vol.ndim == 2 and series.shape[0] == 1:
        vol = io.Volume(vol.array[None], (series.spacing[0],) + vol.spacing)
    if vol.shape != series.shape:
        raise DataError(f"{path}: mask shape {vol.shape} (z, y, x) differs from its series "
                        f"{SEQUENCES[channel][0]} shape {series.shape}")
    mask = np.asarray(vol.array) > 0
    why = io.geometry_mismatch(vol.geometry, series.geometry)
    if why:
        # Same shape, different header: trust the mask's own scanner coordinates, and say so.
        notes.append(f"{path.name}: header differs from its series ({why}); placed by its own "
                     "header")
        return io.Volume.on_grid(mask, vol.geometry)
    return io.Volume.on_grid(mask, series.geometry)


def read_patient(folder: str | Path, *, gtvp_from: str = "CET1") -> Case:
    """Read one patient folder (``MRI-Segments/NNN``) as a :class:`Case` on the T1 grid.

    Returns
    -------
    Case
        ``images`` T1, T2, CET1 float32 (z, y, x) on the T1WI grid; ``labels`` GTV_T1, GTV_T2,
        GTV_CET1 and GTVp (those available); spacing, origin and direction of the T1WI series.

    Raises
    ------
    DataError
        Missing sequence folder, unreadable series (or two series in one folder), mask shape
        different from its series; the message names the path.
    """
    if gtvp_from not in GTVP_CHOICES:
        raise ParameterError(f"gtvp_from must be one of {', '.join(GTVP_CHOICES)}, got {gtvp_from!r}")
    patient = Path(folder)
    if not patient.is_dir():
        raise DataError(f"{patient}: patient folder not found")
    series = {c: _read_series(patient, c) for c in CHANNELS}
    ref = series["T1"].geometry
    notes: list[str] = []
    images: dict[str, np.ndarray] = {}
    resampled: dict[str, str | None] = {}
    for c in CHANNELS:
        vol = series[c]
        why = io.geometry_mismatch(vol.geometry, ref)
        resampled[c] = why
        if why:
            vol = io.resample_to(vol, ref, order="linear")
        images[c] = np.asarray(vol.array, dtype=np.float32)
    labels: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for c in CHANNELS:
        mask = _read_mask(patient, c, series[c], notes)
        if mask is None:
            missing.append(SEQUENCES[c][1])
            continue
        if io.geometry_mismatch(mask.geometry, ref):
            mask = io.resample_to(mask, ref, order="nearest")
        labels[f"GTV_{c}"] = np.asarray(mask.array, dtype=bool)
    gtvp, used = _gtvp(labels, gtvp_from)
    if gtvp is not None:
        labels["GTVp"] = gtvp
    meta = {
        "source": "li2024",
        "patient": patient.name,
        "grid": "T1WI",
        "GTVp_from": used,
        "missing_masks": missing,
        "resampled_to_T1": {c: why for c, why in resampled.items() if c != "T1"},
        "series": {c: {"shape": list(v.shape), "spacing": list(v.spacing)} for c, v in series.items()},
        "notes": notes,
    }
    return Case(patient.name, images, labels, ref.spacing, ref.origin, ref.direction, meta)


def _gtvp(labels: dict[str, np.ndarray], how: str) -> tuple[np.ndarray | None, str | None]:
    avail = [c for c in _FALLBACK if f"GTV_{c}" in labels]
    if not avail:
        return None, None
    if how in ("majority", "union"):
        stack = np.stack([labels[f"GTV_{c}"] for c in avail])
        need = 1 if how == "union" else min(2, len(avail))
        return stack.sum(0) >= need, f"{how} of {'+'.join(avail)}"
    chosen = how if how in avail else avail[0]
    return labels[f"GTV_{chosen}"].copy(), chosen


def plan(src: Path, *, gtvp_from: str = "CET1"):
    """List the patients under ``src`` for :func:`npcrepro.datasets.adapters.convert`."""
    from npcrepro.datasets.adapters.base import Plan, SourceCase

    if gtvp_from not in GTVP_CHOICES:
        raise ParameterError(f"gtvp_from must be one of {', '.join(GTVP_CHOICES)}, got {gtvp_from!r}")
    root = find_root(src)
    items = [SourceCase(p.name, "Tr", p) for p in list_patients(root)]
    return Plan(
        source="li2024", src=root, items=items,
        read=lambda item: read_patient(item.path, gtvp_from=gtvp_from),
        channels=list(CHANNELS), structures=list(STRUCTURES), spacing_known=True,
        description=DESCRIPTION + " (Li Y. et al. 2024, CC BY 4.0)",
        extra={"grid": "T1WI", "GTVp_from": gtvp_from,
               "resampling": "T2 and CE-T1 to T1 in scanner coordinates (linear; masks nearest)"},
        notes=[f"all channels on the T1WI grid; GTVp = {gtvp_from} mask (fallback CET1, T1, T2)"],
    )
