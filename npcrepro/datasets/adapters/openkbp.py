"""OpenKBP (Babier et al., Med. Phys. 2021): head-and-neck planning CT with organ and target masks.

Source layout (``provided-data`` of github.com/ababier/open-kbp)::

    <src>/train-pats/pt_N/ct.csv                 sparse CT, header ``,data``, rows ``flat_index,value``
    <src>/train-pats/pt_N/<Structure>.csv        rows ``flat_index,`` = voxels inside the structure
    <src>/train-pats/pt_N/voxel_dimensions.csv   three voxel sizes in mm
    <src>/test-pats/pt_N/...                     (and valid-pats/ in the full release)

``src`` may be ``provided-data`` itself, its parent, or a single split folder (``train-pats``).
Every volume is a 128 x 128 x 128 grid; the flat index is a C-order ravel of it, and voxels that are
not listed are 0 (CT) or outside (structures).

What the data show (established on all 64 patients of the project's extract; the checks are in
``tests/test_adapters.py`` and the figure is :func:`orientation_figure`)

* **Axes.** Of the three C-order axes ``(a, b, c)``: ``c`` is the slice axis (superior-inferior);
  the mandible's centroid has a smaller ``c`` than the spinal cord's, the brainstem's is smaller
  than the mandible's, so ``c`` grows **inferiorly**. ``a`` is anterior-posterior, growing
  **posteriorly** (mandible at small ``a``, spinal cord at large ``a``). ``b`` is right-left,
  growing towards the **patient's left** (LeftParotid at larger ``b`` than RightParotid in every
  patient). This is the usual DICOM row/column/slice layout: ``(a, b, c) = (row, column, slice)``
  with slices stored head first.
* **Voxel size.** ``voxel_dimensions.csv`` lists (row, column, slice) sizes: the first two are
  always equal (3.75-5.08 mm) and the third is the slice thickness (2.43-3 mm).
* **CT units.** Stored values are **HU + 1000**, clipped at 0 (HU <= -1000 are stored as 0 and not
  listed). Evidence: the saturation plateaus of dental metal sit at exactly 4071, 4095 and 3976,
  i.e. 3071 HU (the 12-bit cap with rescale intercept -1024), 3095 HU (intercept -1000) and 2976 HU
  (a 4000 cap, intercept -1024) with an offset of 1000 -- with an offset of 1024 they would be the
  unnatural 3047, 3071 and 2952 HU, and the 4119 expected for intercept -1000 scanners never
  occurs. The tissue values agree (all 64 patients, :func:`tissue_hu`): with 1000, the fat peak
  lies at -112 to -62 HU (mean -91, in the 48 patients with a fat peak), the soft-tissue peak at
  13-73 HU (mean 43) and the median of brainstem + spinal cord at 12-43 HU (mean 32); with 1024,
  neural tissue would sit at 8 HU on average, too low. (The extract's README guessed HU + 1024.)

Conversion

* Arrays become (z, y, x) = ``(c, a, b)`` with ``z`` flipped so that **z grows superiorly**; ``y``
  grows posteriorly and ``x`` towards the patient's left: the LPS frame with an identity direction,
  as SimpleITK returns an axial CT. An axial slice shown with ``imshow`` (row 0 at the top) is in
  radiological convention: anterior at the top, the patient's left on the viewer's right.
* Spacing (z, y, x) = (slice, row, column) sizes. The origin is unknown (OpenKBP dropped it) and is
  set to (0, 0, 0); ``meta["origin_known"]`` is False.
* CT in HU = stored - ``hu_offset`` (1000); unlisted voxels become -1000 HU.
* Structures are renamed to the project's names (:data:`PROJECT_NAMES`, e.g. ``LeftParotid`` ->
  ``Parotid_L``); pass ``names="openkbp"`` to keep OpenKBP's. A structure a patient lacks has no
  file and stays absent; a structure file with no voxel is also treated as absent and noted in
  ``meta["empty_structure_files"]``.
* A truncated ``ct.csv`` is refused (``convert`` skips the patient and says why): a last line
  without its line end, or structure voxels without a CT value (:data:`MAX_UNLISTED_FRACTION`).
* ``train-pats`` -> ``imagesTr``, ``test-pats`` -> ``imagesTs``, ``valid-pats`` -> ``imagesTr``; the
  original split name is kept in ``meta["openkbp_split"]``.

PTV70 (the high-dose planning target) is the project's stand-in for a primary-tumour GTV on CT;
wherever it is used so, the chapter says it. The cohort is mostly oropharynx, not NPC.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from npcrepro.datasets.case import Case
from npcrepro.errors import DataError, ParameterError

DESCRIPTION = "OpenKBP head-and-neck planning CT (sparse CSV), organs at risk and PTVs"

#: Grid size of every OpenKBP volume (a, b, c).
GRID = (128, 128, 128)
#: Stored CT value = HU + HU_OFFSET (see the module docstring for the evidence).
HU_OFFSET = 1000.0
#: Lowest HU the data can express (stored 0).
HU_FLOOR = -1000.0
#: Largest share of a structure's voxels that may lack a CT value (stored 0, i.e. <= -1000 HU)
#: before ``ct.csv`` is taken as truncated. In all 64 patients of the extract the largest share is
#: 4.5 % (pt_149's SpinalCord, at the edge of the field of view); PTV70 reaches 1.3 % (air at the
#: skin), the Larynx 3.6 % (its lumen). A file cut short loses the posterior rows of the grid (the
#: flat index runs anterior to posterior), where the brainstem and spinal cord lie: pt_2 cut at half
#: its rows leaves 18 % of its SpinalCord without CT. A cut behind every structure (the last ~25 %
#: of rows) is caught only when it splits a line.
MAX_UNLISTED_FRACTION = 0.1

#: OpenKBP structure name -> project structure name.
PROJECT_NAMES: dict[str, str] = {
    "Brainstem": "Brainstem",
    "SpinalCord": "SpinalCord",
    "RightParotid": "Parotid_R",
    "LeftParotid": "Parotid_L",
    "Esophagus": "Esophagus",
    "Larynx": "Larynx",
    "Mandible": "Mandible",
    "PTV56": "PTV56",
    "PTV63": "PTV63",
    "PTV70": "PTV70",
}
#: Painting order of the label map (later wins): targets first, organs drawn over them.
OPENKBP_ORDER = ("PTV56", "PTV63", "PTV70", "Esophagus", "Larynx", "Mandible", "RightParotid",
                 "LeftParotid", "SpinalCord", "Brainstem")
#: OpenKBP split folder -> dataset split.
SPLITS = {"train-pats": "Tr", "valid-pats": "Tr", "test-pats": "Ts"}


def structure_names(names: str = "project") -> dict[str, str]:
    """OpenKBP name -> name used in the dataset, for ``names="project"`` or ``"openkbp"``."""
    if names == "project":
        return dict(PROJECT_NAMES)
    if names == "openkbp":
        return {k: k for k in PROJECT_NAMES}
    raise ParameterError(f"names must be 'project' or 'openkbp', got {names!r}")


# ------------------------------------------------------------------------------------- reading
def read_sparse_csv(path: str | Path, *, values: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one OpenKBP sparse CSV.

    Parameters
    ----------
    path : path
        ``ct.csv`` (``values=True``) or a structure CSV (``values=False``).

    Returns
    -------
    index : np.ndarray
        int64 flat indices (C order of the 128^3 grid), shape (n,).
    value : np.ndarray or None
        float32 stored values, shape (n,) (None when ``values`` is False).

    Raises
    ------
    DataError
        Missing file, header other than ``,data``, an incomplete last line (a truncated file),
        non-integer or out-of-range indices, missing values.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as fh:
        header = fh.readline().decode("utf-8", "replace").strip()
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if size and not tail.endswith(b"\n"):
        last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
        raise DataError(f"{path}: truncated file: the last line {last!r} is incomplete "
                        f"(no line end after {size} bytes)")
    if header.replace(" ", "") != ",data":
        raise DataError(f"{path}: not an OpenKBP sparse CSV (header {header[:40]!r}, expected ',data')")
    try:
        frame = pd.read_csv(path, index_col=0)
    except Exception as exc:  # pandas raises several parser error types
        raise DataError(f"{path}: cannot parse CSV ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    raw_index = frame.index.to_numpy()
    if raw_index.size and not np.issubdtype(raw_index.dtype, np.integer):
        raise DataError(f"{path}: voxel indices are not integers")
    index = raw_index.astype(np.int64)
    n_voxels = int(np.prod(GRID))
    if index.size and (index.min() < 0 or index.max() >= n_voxels):
        raise DataError(f"{path}: voxel index out of range 0..{n_voxels - 1} "
                        f"(found {index.min()}..{index.max()})")
    if not values:
        return index, None
    value = frame["data"].to_numpy(dtype=np.float32)
    if not np.isfinite(value).all():
        raise DataError(f"{path}: {int((~np.isfinite(value)).sum())} rows without a finite value")
    return index, value


def read_voxel_dimensions(path: str | Path) -> tuple[float, float, float]:
    """The three voxel sizes (row, column, slice) in mm from ``voxel_dimensions.csv``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        vals = np.loadtxt(path, dtype=float, ndmin=1).ravel()
    except ValueError as exc:
        raise DataError(f"{path}: cannot parse voxel dimensions ({exc})") from None
    if vals.size != 3 or not np.all(np.isfinite(vals)) or np.any(vals <= 0):
        raise DataError(f"{path}: expected three positive voxel sizes in mm, got {vals.tolist()}")
    return float(vals[0]), float(vals[1]), float(vals[2])


def to_zyx(native: np.ndarray) -> np.ndarray:
    """OpenKBP's (a, b, c) = (row A->P, column R->L, slice S->I) array -> (z I->S, y A->P, x R->L)."""
    return np.ascontiguousarray(np.moveaxis(native, 2, 0)[::-1])


def from_zyx(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_zyx` (back to OpenKBP's flat-index layout)."""
    return np.ascontiguousarray(np.moveaxis(array[::-1], 0, 2))


def flat_index_to_zyx(index: np.ndarray) -> np.ndarray:
    """OpenKBP flat indices (n,) -> (n, 3) integer (z, y, x) indices of the converted arrays."""
    a, b, c = np.unravel_index(np.asarray(index, dtype=np.int64), GRID)
    return np.stack([GRID[2] - 1 - c, a, b], axis=1)


def read_patient(folder: str | Path, *, names: str = "project", hu_offset: float = HU_OFFSET,
                 split: str | None = None) -> Case:
    """Read one OpenKBP patient folder (``pt_N``) as a :class:`Case` (see module docstring).

    Parameters
    ----------
    folder : path
        The ``pt_N`` folder.
    names : {"project", "openkbp"}
        Structure naming (:data:`PROJECT_NAMES` or OpenKBP's own).
    hu_offset : float
        Stored value minus this is HU (1000, established from the data).
    split : str, optional
        Original split folder name for ``meta`` (default: the parent folder's name).

    Returns
    -------
    Case
        ``images["CT"]`` float32 (128, 128, 128) in HU, ``labels`` bool masks of the structures the
        patient has; spacing (z, y, x) mm.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: patient folder not found")
    mapping = structure_names(names)
    spacing_abc = read_voxel_dimensions(folder / "voxel_dimensions.csv")
    index, value = read_sparse_csv(folder / "ct.csv")
    if np.unique(index).size != index.size:
        raise DataError(f"{folder / 'ct.csv'}: repeated voxel indices")
    ct = np.zeros(int(np.prod(GRID)), np.float32)
    ct[index] = value
    listed = np.zeros(ct.size, bool)
    listed[index] = True
    ct = to_zyx(ct.reshape(GRID)) - np.float32(hu_offset)
    labels: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    empty: list[str] = []
    for openkbp_name in OPENKBP_ORDER:
        path = folder / f"{openkbp_name}.csv"
        if not path.exists():
            continue
        sidx, _ = read_sparse_csv(path, values=False)
        if sidx.size == 0:
            empty.append(openkbp_name)
            continue
        _check_ct_covers(folder / "ct.csv", openkbp_name, sidx, listed, index)
        mask = np.zeros(int(np.prod(GRID)), bool)
        mask[sidx] = True
        labels[mapping[openkbp_name]] = to_zyx(mask.reshape(GRID))
        counts[mapping[openkbp_name]] = int(np.unique(sidx).size)
    unknown = sorted(p.stem for p in folder.glob("*.csv")
                     if p.stem not in PROJECT_NAMES and p.stem not in ("ct", "voxel_dimensions",
                                                                       "dose", "possible_dose_mask"))
    meta = {
        "source": "openkbp",
        "patient": folder.name,
        "openkbp_split": split or folder.parent.name,
        "hu_offset": float(hu_offset),
        "voxel_dimensions_mm": list(spacing_abc),
        "native_axes": "(a, b, c) = (row: anterior->posterior, column: right->left, "
                       "slice: superior->inferior); converted to (z, y, x) = (c reversed, a, b)",
        "orientation": "LPS, identity direction: z inferior->superior, y anterior->posterior, "
                       "x right->left (patient)",
        "origin_known": False,
        "structure_names": {mapping[k]: k for k in OPENKBP_ORDER if mapping[k] in labels},
        "voxel_counts": counts,
        "empty_structure_files": empty,
        "unknown_structure_files": unknown,
    }
    spacing = (spacing_abc[2], spacing_abc[0], spacing_abc[1])
    return Case(folder.name, {"CT": ct}, labels, spacing, (0.0, 0.0, 0.0), np.eye(3), meta)


def _check_ct_covers(ct_path: Path, structure: str, sidx: np.ndarray, listed: np.ndarray,
                     ct_index: np.ndarray) -> None:
    """DataError when more than :data:`MAX_UNLISTED_FRACTION` of a structure's voxels (flat
    indices ``sidx``) have no row in ``ct.csv`` (``listed``: bool per flat voxel): structures lie in
    the body, so the CT there was cut off, and would read as -1000 HU."""
    missing = int(np.count_nonzero(~listed[sidx]))
    if missing > MAX_UNLISTED_FRACTION * sidx.size:
        last = int(ct_index.max()) if ct_index.size else -1
        raise DataError(f"{ct_path}: looks truncated: {missing} of {sidx.size} {structure} voxels have "
                        f"no CT value (they would read as {HU_FLOOR:g} HU inside the body; the last "
                        f"listed voxel is {last}, row {last // (GRID[1] * GRID[2])} of {GRID[0]})")


# ------------------------------------------------------------------------------------ the plan
def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_root(src: str | Path) -> Path:
    """The folder holding the split folders (``train-pats`` ...), or a single split folder."""
    src = Path(src)
    for cand in (src, src / "provided-data", src / "open-kbp" / "provided-data"):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    if src.name in SPLITS or any(p.is_dir() and (p / "ct.csv").exists() for p in _subdirs(src)):
        return src
    raise DataError(f"{src}: not an OpenKBP folder (expected train-pats/ or test-pats/ with "
                    "pt_N/ct.csv inside, or a folder of pt_N/ folders)")


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def list_patients(src: str | Path) -> list[tuple[str, Path]]:
    """(split folder name, patient folder) for every patient, training splits first, sorted by number."""
    root = find_root(src)
    if any((root / s).is_dir() for s in SPLITS):
        groups = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
    else:
        groups = [(root.name if root.name in SPLITS else "train-pats", root)]
    out = []
    for split_name, folder in groups:
        pts = sorted((p for p in _subdirs(folder) if not p.name.startswith(".")),
                     key=lambda p: _natural_key(p.name))
        out += [(split_name, p) for p in pts]
    return out


def plan(src: Path, *, names: str = "project", hu_offset: float = HU_OFFSET):
    """List the patients under ``src`` for :func:`npcrepro.datasets.adapters.convert`."""
    from npcrepro.datasets.adapters.base import Plan, SourceCase

    mapping = structure_names(names)
    root = find_root(src)
    items, split_of = [], {}
    for split_name, folder in list_patients(root):
        items.append(SourceCase(folder.name, SPLITS.get(split_name, "Tr"), folder))
        split_of[folder.name] = split_name
    names_seen = [i.name for i in items]
    if len(set(names_seen)) != len(names_seen):
        raise DataError(f"{root}: the same patient name appears in two split folders")

    def read(item):
        return read_patient(item.path, names=names, hu_offset=hu_offset, split=split_of[item.name])

    return Plan(
        source="openkbp", src=root, items=items, read=read, channels=["CT"],
        structures=[mapping[k] for k in OPENKBP_ORDER], spacing_known=True,
        description=DESCRIPTION + " (Babier et al., Med. Phys. 48:5549, 2021; MIT license)",
        extra={"structure_names": {mapping[k]: k for k in OPENKBP_ORDER},
               "hu_offset": float(hu_offset), "ct_units": "HU",
               "orientation": "LPS, identity direction, z grows superiorly; origin unknown (0)",
               "splits": {"train-pats": "imagesTr", "valid-pats": "imagesTr",
                          "test-pats": "imagesTs"},
               "note": "PTV70 stands in for a primary-tumour GTV on CT; the cohort is mostly "
                       "oropharynx, not NPC"},
        notes=[f"CT converted to HU as stored - {hu_offset:g} (unlisted voxels = {-hu_offset:g} HU)",
               "axes (a, b, c) -> (z, y, x) = (c reversed, a, b): z superior, y posterior, x patient "
               "left; origin unknown, set to 0",
               "structure names: " + ("project (LeftParotid -> Parotid_L, RightParotid -> "
                                      "Parotid_R)" if names == "project" else "OpenKBP's own")],
    )


# ------------------------------------------------------------------------------- HU summaries
def body_mask(ct_hu: np.ndarray, threshold: float = -400.0) -> np.ndarray:
    """The patient's body: voxels above ``threshold`` HU, largest 3D component, holes filled per
    axial slice (so airways inside the body are included). Shape as ``ct_hu``."""
    from scipy import ndimage as ndi

    fg = ct_hu > threshold
    lab, n = ndi.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == sizes.argmax()
    return np.stack([ndi.binary_fill_holes(s) for s in body])


def tissue_hu(case: Case, *, channel: str = "CT") -> "pandas.DataFrame":  # noqa: F821
    """Typical HU of air, fat, soft tissue and bone in one CT case, each from an independent rule.

    Rules (each row names its own):

    * air: 5th percentile of body voxels below -400 HU (airways, sinuses, lung apices; the darkest
      voxels are the least mixed with tissue at 4 mm voxels), and the median outside the body (the
      data's floor, -1000 HU);
    * fat: the peak of the (3-bin smoothed, 5 HU bins) histogram of body voxels in [-200, -40) HU;
      NaN when the histogram has no interior peak there (little fat in the field of view);
    * soft tissue: median inside Brainstem + SpinalCord (neural tissue, ~20-40 HU), and the peak of
      the body histogram in [-30, 150) HU (muscle and glands);
    * bone: median and 95th percentile inside the Mandible.

    Returns
    -------
    pandas.DataFrame
        Columns ``tissue``, ``rule``, ``hu`` (float), ``voxels`` (int). Rules whose structure is
        missing are left out.
    """
    import pandas as pd

    ct = np.asarray(case.images[channel], dtype=np.float32)
    body = body_mask(ct)
    inside = ct[body]
    rows = []

    def add(tissue, rule, values, hu):
        rows.append({"tissue": tissue, "rule": rule, "hu": float(hu), "voxels": int(np.size(values))})

    air = ct[body & (ct < -400)]
    if air.size:
        add("air", "body voxels < -400 HU: 5th percentile", air, np.percentile(air, 5))
    add("air", "outside the body: median", ct[~body], np.median(ct[~body]) if (~body).any() else np.nan)
    fat = inside[(inside >= -200) & (inside < -40)]
    add("fat", "peak of body histogram in [-200, -40) HU", fat, _peak(fat, -200, -40))
    neural = np.zeros_like(body)
    for s in ("Brainstem", "SpinalCord"):
        if s in case.labels:
            neural |= case.labels[s]
    if neural.any():
        add("soft tissue", "Brainstem + SpinalCord: median", ct[neural], np.median(ct[neural]))
    soft = inside[(inside >= -30) & (inside < 150)]
    add("soft tissue", "peak of body histogram in [-30, 150) HU", soft, _peak(soft, -30, 150))
    if "Mandible" in case.labels:
        bone = ct[case.labels["Mandible"]]
        add("bone", "Mandible: median", bone, np.median(bone))
        add("bone", "Mandible: 95th percentile", bone, np.percentile(bone, 95))
    return pd.DataFrame(rows, columns=["tissue", "rule", "hu", "voxels"])


def _peak(values: np.ndarray, lo: float, hi: float, width: float = 5.0) -> float:
    """Centre of the highest bin of a 3-bin smoothed histogram on [lo, hi); NaN at the edges."""
    if np.size(values) == 0:
        return float("nan")
    h, edges = np.histogram(values, bins=np.arange(lo, hi + width / 2, width))
    k = int(np.convolve(h, np.ones(3) / 3, mode="same").argmax())
    if k == 0 or k >= len(h) - 2:
        return float("nan")
    return float(edges[k] + width / 2)


# ------------------------------------------------------------------------------------- figure
def orientation_figure(case: Case, *, channel: str = "CT", window: tuple[float, float] = (-250, 350)):
    """Mid-sagittal, axial and coronal views proving the converted orientation.

    The sagittal view passes through the spinal cord and shows the mandible anterior (left of the
    image), the spinal cord posterior and the brainstem superior (top); the axial view passes
    through the mandible; the coronal view through both parotids shows the patient's left parotid
    on the viewer's right (radiological convention). Works with project or OpenKBP structure names.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from npcrepro.datasets.adapters.figures import orientation_figure as _figure

    def pick(*candidates):
        return next((c for c in candidates if c in case.labels), None)

    return _figure(case, channel=channel, window=window,
                   anterior=pick("Mandible"), posterior=pick("SpinalCord"),
                   superior=pick("Brainstem"), left=pick("Parotid_L", "LeftParotid"),
                   right=pick("Parotid_R", "RightParotid"))
