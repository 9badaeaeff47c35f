"""A folder of NIfTI (or NRRD / MHA) images and masks matched by name.

Accepted layouts (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd`` in any mix)::

    A. two folders                          B. one flat folder
    <src>/images/<case>.nii.gz              <src>/<case>.nii.gz  or  <case>_<channel>.nii.gz
          or  <case>_<channel>.nii.gz       <src>/<case>_mask.nii.gz   (also _seg, _label, _labels,
    <src>/masks/<case>.nii.gz   label map                                   _gt, _segmentation)
          or  <case>/<structure>.nii.gz  one binary mask per structure

Folder aliases: ``images`` = ``image``, ``imgs``, ``imagesTr``; ``masks`` = ``mask``, ``labels``,
``labelsTr``, ``segmentations``, ``seg``. (A folder with ``dataset.json`` is an nnU-Net dataset: use
the ``nnunet`` source.)

Case and channel names. The mask names give the case names; an image is ``<case>`` (one channel,
named by ``channel``, default ``"image"``) or ``<case>_<channel>`` (channel = the rest, e.g.
``pt01_T1.nii.gz``, ``pt01_T2.nii.gz``). Pass ``channels=["T1", "T2"]`` to fix the channel order and
to match ``<case>_<channel>`` when case names contain underscores. Images without a mask become
cases without structures. Every case must have every channel (a case that lacks one is skipped with
the reason).

Structure names. Per-structure folders name themselves (the file stems). Label maps need a mapping
``value -> name``, taken from, in order: the ``labels`` option (``{1: "GTVp", 2: "Node"}`` or
``{"GTVp": 1, ...}``); a ``labels.json`` in ``src`` or in the masks folder (either form); else it is
inferred by scanning the masks once: binary masks (values 0 and one other value) become the
structure named by ``structure`` (default ``"GTVp"``), other values become ``label_<value>``. A label
value missing from a given mapping raises :class:`~npcrepro.DataError` naming the file.

Grids. Channels on a grid other than the first channel's are resampled onto it in scanner
coordinates (linear; noted in the case meta). A mask must have the first channel's shape (else
:class:`~npcrepro.DataError`); one with the same shape but a different header is placed by its own
header (nearest neighbour) and noted. 2D files are stored as (1, y, x).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from npcrepro import io
from npcrepro.datasets.case import Case
from npcrepro.errors import DataError, ParameterError

DESCRIPTION = "a folder of NIfTI/NRRD/MHA images and masks matched by name"
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_DIRS = ("images", "image", "imgs", "imagesTr")
MASK_DIRS = ("masks", "mask", "labels", "labelsTr", "segmentations", "seg")
MASK_TAGS = ("mask", "seg", "label", "labels", "gt", "segmentation")


def _stem(path: Path) -> str | None:
    low = path.name.lower()
    for s in SUFFIXES:
        if low.endswith(s):
            return path.name[: -len(s)]
    return None


def _files(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        stem = _stem(p)
        if p.is_file() and stem is not None and not p.name.startswith("."):
            if stem in out:
                raise DataError(f"{p}: two files with the stem {stem!r} in {folder}")
            out[stem] = p
    return out


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in names:
        if n.lower() in by_lower:
            return by_lower[n.lower()]
    return None


def _normalise_mapping(labels: Mapping, origin: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for k, v in labels.items():
        if str(k).lower() == "background" or v in ("background",):
            continue
        try:
            value, name = (int(k), str(v)) if str(k).lstrip("-").isdigit() else (int(v), str(k))
        except (TypeError, ValueError):
            raise DataError(f"{origin}: label mapping entry {k!r}: {v!r} is neither value -> name "
                            "nor name -> value") from None
        if value == 0:
            continue
        if value in out:
            raise DataError(f"{origin}: label value {value} mapped twice")
        out[value] = name
    if not out:
        raise DataError(f"{origin}: the label mapping names no foreground value")
    return out


class _Layout:
    """What :func:`scan` found."""

    def __init__(self, root, images, masks, channels, mask_kind, mapping, notes):
        self.root: Path = root
        self.images: dict[str, dict[str, Path]] = images  # case -> channel -> file
        self.masks: dict[str, Path] = masks  # case -> label-map file or structure folder
        self.channels: list[str] = channels
        self.mask_kind: str = mask_kind  # "labelmap" | "folders" | "none"
        self.mapping: dict[int, str] = mapping
        self.notes: list[str] = notes

    @property
    def structures(self) -> list[str]:
        if self.mask_kind == "folders":
            names: dict[str, None] = {}
            for folder in self.masks.values():
                for stem in _files(folder):
                    names[stem] = None
            return list(names)
        return list(dict.fromkeys(self.mapping.values()))


def _split_channels(stems: dict[str, Path], cases: set[str], channels: Sequence[str] | None,
                    channel: str, where: Path) -> dict[str, dict[str, Path]]:
    out: dict[str, dict[str, Path]] = {}

    def put(case, ch, path):
        if ch in out.setdefault(case, {}):
            raise DataError(f"{path}: a second file for case {case!r}, channel {ch!r}")
        out[case][ch] = path

    for stem, path in stems.items():
        if channels:
            ch = next((c for c in channels if stem.endswith(f"_{c}")), None)
            if ch is not None:
                put(stem[: -len(ch) - 1], ch, path)
            elif len(channels) == 1:
                put(stem, channels[0], path)
            else:
                raise DataError(f"{path}: name matches none of the channels {list(channels)} "
                                "(expected <case>_<channel>)")
            continue
        if stem in cases or not cases:
            put(stem, channel, path)
            continue
        owner = max((c for c in cases if stem.startswith(c + "_")), key=len, default=None)
        if owner is None:
            put(stem, channel, path)  # an image without a mask
        else:
            put(owner, stem[len(owner) + 1:], path)
    for case, chans in out.items():
        if channel in chans and len(chans) > 1:
            raise DataError(f"{where}: case {case!r} has both {chans[channel].name} and "
                            f"<case>_<channel> files ({', '.join(p.name for p in chans.values())})")
    return out


def scan(src: str | Path, *, labels: Mapping | None = None, structure: str = "GTVp",
         channel: str = "image", channels: Sequence[str] | None = None) -> _Layout:
    """Find images, masks, channels and the label mapping under ``src`` (module docstring)."""
    root = Path(src)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if (root / "dataset.json").exists():
        raise DataError(f"{root}: holds dataset.json (an nnU-Net/npcrepro dataset): use the 'nnunet' "
                        "source")
    notes: list[str] = []
    img_dir, mask_dir = _find_dir(root, IMAGE_DIRS), _find_dir(root, MASK_DIRS)
    masks: dict[str, Path] = {}
    if img_dir is not None:  # layout A
        stems = _files(img_dir)
        if mask_dir is not None:
            masks = _files(mask_dir)
            folders = {p.name: p for p in mask_dir.iterdir() if p.is_dir() and _files(p)}
            if masks and folders:
                raise DataError(f"{mask_dir}: mixes label-map files and per-structure folders")
            masks = masks or folders
        where = img_dir
    else:  # layout B
        all_files = _files(root)
        tag = re.compile(r"^(.*)_(" + "|".join(MASK_TAGS) + r")$", re.I)
        stems = {}
        for stem, path in all_files.items():
            m = tag.match(stem)
            if m:
                masks[m.group(1)] = path
            else:
                stems[stem] = path
        where = root
    if not stems:
        raise DataError(f"{where}: no images ({', '.join(SUFFIXES)}) found; expected images/ and "
                        "masks/ folders or <case>[_<channel>] files with <case>_mask files")
    images = _split_channels(stems, set(masks), channels, channel, where)
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{mask_dir or root}: masks without an image: {', '.join(orphans[:5])}")
    if channels:
        chan_list = list(channels)
    else:
        counts: dict[str, int] = {}
        for chans in images.values():
            for c in chans:
                counts[c] = counts.get(c, 0) + 1
        chan_list = sorted(counts, key=lambda c: (-counts[c], c))
    kind = "none" if not masks else ("folders" if next(iter(masks.values())).is_dir() else "labelmap")
    mapping: dict[int, str] = {}
    if kind == "labelmap":
        mapping = _mapping(root, mask_dir, labels, structure, masks, notes)
    elif labels is not None:
        notes.append("labels option ignored: masks are per-structure folders")
    unlabelled = sorted(set(images) - set(masks))
    if unlabelled and masks:
        notes.append(f"{len(unlabelled)} image(s) without a mask converted without structures")
    return _Layout(root, images, masks, chan_list, kind, mapping, notes)


def _mapping(root, mask_dir, labels, structure, masks, notes) -> dict[int, str]:
    if labels is not None:
        return _normalise_mapping(labels, "labels option")
    for folder in (root, mask_dir):
        path = folder / "labels.json" if folder is not None else None
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
            if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
                data = data["labels"]
            if not isinstance(data, dict):
                raise DataError(f"{path}: expected an object mapping label values and names")
            notes.append(f"label names from {path}")
            return _normalise_mapping(data, str(path))
    values: set[int] = set()
    for path in masks.values():
        arr = np.asarray(io.read(path).array)
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: label map with non-integer values")
        values |= set(np.unique(arr).astype(int).tolist())
    values.discard(0)
    if not values:
        raise DataError(f"{mask_dir or root}: every mask is empty; cannot infer label names")
    if len(values) == 1:
        notes.append(f"binary masks (value {next(iter(values))}) named {structure!r}")
        return {next(iter(values)): structure}
    notes.append(f"label names inferred: {', '.join(f'label_{v}' for v in sorted(values))} (pass "
                 "labels= or a labels.json to name them)")
    return {v: f"label_{v}" for v in sorted(values)}


def _as3d(vol: io.Volume) -> io.Volume:
    if vol.ndim == 3:
        return vol
    d3 = np.eye(3)
    d3[1:, 1:] = vol.direction
    return io.Volume(vol.array[None], (1.0,) + vol.spacing, (0.0,) + vol.origin, d3)


def _place_mask(mask: np.ndarray, vol: io.Volume, ref: io.Geometry, path: Path,
                notes: list[str]) -> np.ndarray:
    if vol.shape != tuple(ref.shape):
        raise DataError(f"{path}: mask shape {vol.shape} (z, y, x) differs from its image "
                        f"shape {tuple(ref.shape)}")
    why = io.geometry_mismatch(vol.geometry, ref)
    if not why:
        return mask
    notes.append(f"{path.name}: header differs from the image ({why}); placed by its own header")
    return io.resample_to(io.Volume.on_grid(mask, vol.geometry), ref, order="nearest").array


def read_case(layout: _Layout, name: str) -> Case:
    """Read case ``name`` of a scanned folder (see :func:`scan`)."""
    files = layout.images[name]
    missing = [c for c in layout.channels if c not in files]
    if missing:
        raise DataError(f"{layout.root}: case {name!r} lacks channel(s) {missing} (has "
                        f"{', '.join(p.name for p in files.values())})")
    notes: list[str] = []
    ref_vol = None
    images: dict[str, np.ndarray] = {}
    for c in layout.channels:
        vol = _as3d(io.read(files[c]))
        if ref_vol is None:
            ref_vol = vol
        elif io.geometry_mismatch(vol.geometry, ref_vol.geometry):
            notes.append(f"{files[c].name}: resampled onto the {layout.channels[0]} grid")
            vol = io.resample_to(vol, ref_vol.geometry, order="linear")
        arr = np.asarray(vol.array, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"{files[c]}: {int((~np.isfinite(arr)).sum())} NaN/inf intensities")
        images[c] = arr
    ref = ref_vol.geometry
    labels: dict[str, np.ndarray] = {}
    mpath = layout.masks.get(name)
    if mpath is not None and layout.mask_kind == "folders":
        for stem, path in _files(mpath).items():
            vol = _as3d(io.read(path))
            mask = _place_mask(np.asarray(vol.array) > 0, vol, ref, path, notes)
            if mask.any():
                labels[stem] = mask.astype(bool)
    elif mpath is not None:
        vol = _as3d(io.read(mpath))
        arr = np.asarray(vol.array)
        found = set(np.unique(arr).astype(int).tolist()) - {0}
        unknown = sorted(found - set(layout.mapping))
        if unknown:
            raise DataError(f"{mpath}: label value(s) {unknown} not in the label mapping "
                            f"{layout.mapping}")
        for value, sname in layout.mapping.items():
            m = arr == value
            if m.any():
                m = _place_mask(m, vol, ref, mpath, notes)
                labels[sname] = labels[sname] | m if sname in labels else m.astype(bool)
    meta = {"source": "nifti-folder", "files": {c: files[c].name for c in layout.channels},
            "mask": mpath.name if mpath is not None else None, "notes": notes}
    return Case(name, images, labels, ref.spacing, ref.origin, ref.direction, meta)


def plan(src: Path, *, labels: Mapping | None = None, structure: str = "GTVp",
         channel: str = "image", channels: Sequence[str] | None = None,
         spacing_known: bool = True):
    """Scan ``src`` for :func:`npcrepro.datasets.adapters.convert` (options: module docstring)."""
    from npcrepro.datasets.adapters.base import Plan, SourceCase

    if channels is not None and (isinstance(channels, str) or not channels):
        raise ParameterError(f"channels must be a non-empty list of names, got {channels!r}")
    layout = scan(src, labels=labels, structure=structure, channel=channel, channels=channels)
    items = [SourceCase(name, "Tr", layout.masks.get(name, next(iter(files.values()))))
             for name, files in sorted(layout.images.items())]
    return Plan(
        source="nifti-folder", src=layout.root, items=items,
        read=lambda item: read_case(layout, item.name),
        channels=layout.channels, structures=layout.structures, spacing_known=spacing_known,
        description=DESCRIPTION, extra={"label_mapping": {str(k): v for k, v in layout.mapping.items()},
                                        "mask_kind": layout.mask_kind},
        notes=list(layout.notes),
    )
