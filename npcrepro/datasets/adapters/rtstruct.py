"""DICOM image series with their RT Structure Sets (or DICOM-SEG objects): planning CT or MR and the
clinic's contours, as exported by a treatment-planning system.

Source layout: any folder tree of DICOM files (file names and nesting do not matter; files that are
not DICOM are ignored). Every RTSTRUCT and every SEG file found is **one case**: the image series it
refers to (its RTReferencedSeriesSequence, else the series of the images its contours reference) is
the case's image, and its ROIs are the case's structures.

Conversion

* Image: the referenced series read with pydicom (:func:`npcrepro.dicom.read_series`), values after
  RescaleSlope/Intercept (HU for CT), geometry from ImagePositionPatient, ImageOrientationPatient and
  PixelSpacing, z along the slice normal. One channel, named by ``channel`` (default: the modality,
  ``"CT"`` or ``"MR"``); a case whose series has another modality than the first case's is skipped
  (convert each modality into its own dataset).
* Structures: RTSTRUCT contours are rasterised on the image grid with the even-odd rule at voxel
  centres (:func:`npcrepro.dicom.rtstruct.rasterise`: several contours on one slice are XOR-ed, so
  inner contours are holes; slices without contours are empty). Producers differ on which pixels a
  contour covers: ``rule="centre"`` (the default) takes the pixels whose centre lies inside,
  ``rule="touched"`` adds every pixel the outline passes through (on the command line:
  ``-o rule touched``; :data:`npcrepro.dicom.raster.RULES`); the dataset records the rule
  (``extra.rasterisation``); SEG segments are read frame by frame
  through the images they reference (:func:`npcrepro.dicom.seg.read_seg`). An ROI without any closed
  contour stays absent (listed in ``meta["empty_rois"]``).
* Names: every ROI name is looked up in the name table (:data:`NAMES`, below), ignoring case, spaces,
  dashes and underscores; a name the table does not know is kept as it is. ``names={"MyGTV": "GTVp"}``
  adds to (or overrides) the table, ``names="keep"`` turns it off, and a path to a JSON file of the
  same form is read (on the command line: ``-o names table.json``). When two ROIs of one file map to
  the same name, the first keeps it and the other keeps its own name (noted in ``meta["notes"]``).
  ``meta["roi_names"]`` records the mapping.
* Case names: the PatientID (characters other than letters, digits, ``-``, ``_`` and ``.`` become
  ``_``); when a patient has several structure files, ``<PatientID>_<k>`` in path order.

Errors (:class:`~npcrepro.DataError`, naming the structure file; ``convert`` skips that case and lists
the reason, ``strict=True`` raises): the referenced series is not under the source folder; a contour
lies off the image grid (between slices, or outside the image); unreadable files.

Name table (:data:`NAMES`; the project's name, then the spellings it takes)

==============  ============================================================================
project name    accepted spellings (after dropping case, spaces, ``-`` and ``_``)
==============  ============================================================================
GTVp            GTV, GTVp, GTV_primary, GTV-T, GTVt, GTVnx, GTV_NP, GTV_prim, GTV1
GTVnd           GTVn, GTVnd, GTV_node(s), GTV_LN, GTV-N
CTVp / CTVnd    CTV, CTVp, CTV_primary / CTVn, CTVnd, CTV_nodes
Brainstem       Brainstem, Brain_Stem, Brain stem
SpinalCord      SpinalCord, Spinal_Cord, Cord
Parotid_L/_R    Parotid_L, Parotid_Lt, Parotid_Left, L_Parotid, Lt_Parotid, Left_Parotid, LParotid
Eye_L/_R        Eye_L, L_Eye, Left_Eye, Globe_L
OpticNerve_L/R  OpticNerve_L, Optic_Nerve_L, L_OpticNerve, Left_Optic_Nerve
Chiasm          Chiasm, Optic_Chiasm
Mandible        Mandible, Jaw;  Larynx;  Esophagus, Oesophagus
Body            Body, External, Skin
==============  ============================================================================
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

from npcrepro.datasets.case import Case
from npcrepro.errors import DataError, ParameterError

DESCRIPTION = "DICOM image series with RT Structure Sets or DICOM-SEG (planning CT/MR and contours)"


def _side_spellings(base: list[str], side: str) -> list[str]:
    out = []
    for b in base:
        for s in (side.lower(), {"L": "lt", "R": "rt"}[side], {"L": "left", "R": "right"}[side]):
            out += [f"{b}{s}", f"{s}{b}"]
    return out


def _table() -> dict[str, list[str]]:
    t = {
        "GTVp": ["gtv", "gtvp", "gtvprimary", "gtvt", "gtvnx", "gtvnp", "gtvprim", "gtv1"],
        "GTVnd": ["gtvn", "gtvnd", "gtvnode", "gtvnodes", "gtvln"],
        "CTVp": ["ctv", "ctvp", "ctvprimary"],
        "CTVnd": ["ctvn", "ctvnd", "ctvnode", "ctvnodes"],
        "Brainstem": ["brainstem"],
        "SpinalCord": ["spinalcord", "cord"],
        "Chiasm": ["chiasm", "opticchiasm"],
        "Mandible": ["mandible", "jaw"],
        "Larynx": ["larynx"],
        "Esophagus": ["esophagus", "oesophagus"],
        "Body": ["body", "external", "skin"],
    }
    for side in ("L", "R"):
        t[f"Parotid_{side}"] = _side_spellings(["parotid"], side)
        t[f"Eye_{side}"] = _side_spellings(["eye", "globe"], side)
        t[f"OpticNerve_{side}"] = _side_spellings(["opticnerve"], side)
    return t


def name_key(name: str) -> str:
    """The lookup key of an ROI name: lower case without spaces, dashes and underscores."""
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


#: Lookup key (see :func:`name_key`) -> project structure name; see the module docstring.
NAMES: dict[str, str] = {key: target for target, keys in _table().items() for key in keys}
#: The project names of the table in painting order (targets first; later names win in the label map).
ORDER: tuple[str, ...] = tuple(_table())


def load_names(names: Mapping[str, str] | str | Path | None = None) -> dict[str, str]:
    """The name table to use: :data:`NAMES` updated with ``names`` (a mapping ROI name -> project
    name, or a path to a JSON file holding one); ``"keep"`` gives an empty table (names kept)."""
    if names is None:
        return dict(NAMES)
    if isinstance(names, str) and names == "keep":
        return {}
    if isinstance(names, (str, Path)):
        path = Path(names)
        if not path.exists():
            raise ParameterError(f"names: {path} not found (give a JSON file of ROI name -> project name, "
                                 "or 'keep')")
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(names, Mapping) or not all(isinstance(v, str) for v in names.values()):
        raise ParameterError("names must map ROI names to project names (strings)")
    table = dict(NAMES)
    table.update({name_key(k): v for k, v in names.items()})
    return table


def structure_name(roi_name: str, table: Mapping[str, str]) -> str:
    """The project name of an ROI name under ``table`` (unknown names are kept as they are)."""
    return table.get(name_key(roi_name), roi_name.strip())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip()) or "case"


def _structure_names(kind: str, path: Path) -> tuple[list[str], object]:
    """Names of the ROIs with closed contours (or of the segments) of a structure file, and what was
    read (a StructureSet for RTSTRUCT, the header for SEG)."""
    if kind == "RTSTRUCT":
        from npcrepro.dicom.rtstruct import read_rtstruct

        ss = read_rtstruct(path)
        return [r.name for r in ss.rois if r.contours], ss
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read DICOM file ({type(exc).__name__}: {exc})") from None
    return [str(s.SegmentLabel) for s in getattr(ds, "SegmentSequence", [])], ds


def _seg_series(ds, path: Path, index) -> str:
    """SeriesInstanceUID of the image series a SEG file refers to."""
    for study in getattr(ds, "ReferencedSeriesSequence", []) or []:
        uid = str(getattr(study, "SeriesInstanceUID", ""))
        if uid:
            index.series_files(uid, path)
            return uid
    raise DataError(f"{path}: names no referenced image series (no ReferencedSeriesSequence)")


def _mapping(names: list[str], table: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """ROI name -> structure name; collisions keep the ROI's own name (noted)."""
    out: dict[str, str] = {}
    taken: dict[str, str] = {}
    for roi in names:
        if roi in out:
            continue
        target = structure_name(roi, table)
        if target in taken and taken[target] != roi:
            notes.append(f"ROIs {taken[target]!r} and {roi!r} both map to {target!r}; {roi!r} keeps its name")
            target = roi.strip()
        taken.setdefault(target, roi)
        out[roi] = target
    return out


def plan(src: Path, *, names: Mapping[str, str] | str | None = None, channel: str | None = None,
         rule: str = "centre"):
    """Index the DICOM files under ``src`` and list one case per RTSTRUCT / SEG file for
    :func:`npcrepro.datasets.adapters.convert` (``rule``: how contours become pixels, see above)."""
    from npcrepro.datasets.adapters.base import Plan, SourceCase
    from npcrepro.dicom import find_dicom
    from npcrepro.dicom.raster import RULES

    if rule not in RULES:
        raise ParameterError(f"unknown rasterisation rule {rule!r} (valid: {', '.join(RULES)})")
    table = load_names(names)
    index = find_dicom(src)
    if not index.structures:
        raise DataError(f"{src}: no RTSTRUCT or SEG file found (and {len(index.series)} image series)")
    found = []
    for kind, path in index.structures:
        try:
            roi_names, parsed = _structure_names(kind, path)
            patient = str(getattr(parsed, "patient_id", None) or getattr(parsed, "PatientID", "") or path.stem)
        except DataError:
            roi_names, parsed, patient = [], None, path.stem
        found.append((kind, path, roi_names, parsed, _safe(patient)))
    per_patient: dict[str, int] = {}
    for *_, patient in found:
        per_patient[patient] = per_patient.get(patient, 0) + 1
    seen: dict[str, int] = {}
    items, readers = [], {}
    structures: dict[str, None] = {}
    renamed: dict[str, str] = {}  # ROI name -> structure name, over all files
    modality = None
    for kind, path, roi_names, parsed, patient in found:
        seen[patient] = seen.get(patient, 0) + 1
        name = patient if per_patient[patient] == 1 else f"{patient}_{seen[patient]}"
        items.append(SourceCase(name, "Tr", path))
        readers[name] = (kind, parsed)
        for roi, target in _mapping(roi_names, table, []).items():
            structures[target] = None
            renamed[roi] = target
        if modality is None and parsed is not None:
            try:
                uid = (parsed.referenced_series(index) if kind == "RTSTRUCT"
                       else _seg_series(parsed, path, index))
                modality = index.modality[uid]
            except DataError:
                pass
    chan = channel or modality or "CT"
    names_note = ", ".join(f"{r!r} -> {t}" if r != t else f"{r!r} kept" for r, t in renamed.items())
    ordered = [s for s in ORDER if s in structures] + [s for s in structures if s not in ORDER]

    def read(item: SourceCase) -> Case:
        kind, parsed = readers[item.name]
        return read_case(item.path, index, name=item.name, kind=kind, parsed=parsed, table=table,
                         channel=chan, modality=modality, rule=rule)

    return Plan(
        source="rtstruct", src=Path(src), items=items, read=read, channels=[chan], structures=ordered,
        spacing_known=True, description=DESCRIPTION,
        extra={"name_table": "off (ROI names kept)" if names == "keep" else
               "npcrepro.datasets.adapters.rtstruct.NAMES" + (" + user entries" if names is not None else ""),
               "rasterisation": rule},
        notes=[f"{len(index.structures)} structure file(s), {len(index.series)} image series; "
               "contours rasterised even-odd, " + ("pixels whose centre is inside" if rule == "centre" else
                                                   "every pixel the outline touches") + " (holes = inner contours)",
               f"ROI names: {names_note or 'none'}"],
    )


def read_case(path: str | Path, index, *, name: str | None = None, kind: str | None = None, parsed=None,
              table: Mapping[str, str] | None = None, channel: str | None = None,
              modality: str | None = None, rule: str = "centre") -> Case:
    """Read one structure file (RTSTRUCT or SEG) and its referenced series as a :class:`Case`.

    Parameters
    ----------
    path : path
        The RTSTRUCT or SEG file.
    index : DicomIndex
        :func:`npcrepro.dicom.find_dicom` of the folder holding the referenced series.
    table : mapping, optional
        Name table (default :data:`NAMES`).
    channel : str, optional
        Channel name (default: the series' modality).
    modality : str, optional
        Required modality of the referenced series (DataError naming the file otherwise).
    rule : str
        RTSTRUCT rasterisation: ``"centre"`` or ``"touched"`` (:func:`npcrepro.dicom.rtstruct.rasterise`).

    Returns
    -------
    Case
        ``images[channel]`` float32 (z, y, x); ``labels`` bool (z, y, x) per structure; geometry of
        the series.
    """
    from npcrepro.dicom import read_series
    from npcrepro.dicom.rtstruct import rasterise, read_rtstruct
    from npcrepro.dicom.seg import read_seg

    path = Path(path)
    table = NAMES if table is None else table
    if kind is None:
        kind = next((k for k, p in index.structures if p == path), "RTSTRUCT")
    if kind == "RTSTRUCT":
        ss = parsed if parsed is not None else read_rtstruct(path)
        uid = ss.referenced_series(index)
    else:
        ds = parsed if parsed is not None else _structure_names(kind, path)[1]
        uid = _seg_series(ds, path, index)
    if modality and index.modality[uid] != modality:
        raise DataError(f"{path}: its series {uid} is {index.modality[uid]}, the dataset's first case is "
                        f"{modality} (convert each modality into its own dataset)")
    series = read_series(index.series_files(uid, path), index.root)
    raw = rasterise(ss, series, rule=rule) if kind == "RTSTRUCT" else read_seg(path, series)
    notes: list[str] = []
    empty = [roi for roi, mask in raw.items() if not mask.any()]
    mapping = _mapping([roi for roi in raw if roi not in empty], table, notes)
    labels = {mapping[roi]: raw[roi] for roi in mapping}
    g = series.geometry
    meta = {"source": "rtstruct", "structure_file": str(path), "structure_file_type": kind,
            "patient_id": series.patient_id, "series_uid": series.series_uid, "modality": series.modality,
            "roi_names": mapping, "empty_rois": empty, "notes": notes}
    if kind == "RTSTRUCT":
        meta["skipped_contours"] = {r.name: r.skipped for r in ss.rois if r.skipped}
    chan = channel or series.modality
    return Case(name or _safe(series.patient_id), {chan: series.volume.array}, labels, g.spacing, g.origin,
                g.direction, meta)
