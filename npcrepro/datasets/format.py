"""The project's on-disk dataset format: the nnU-Net v2 raw layout, plus one mask per structure.

::

    <root>/dataset.json
    <root>/imagesTr/<case>_0000.nii.gz      one file per channel, channel index in dataset.json
    <root>/labelsTr/<case>.nii.gz           uint8 label map (overlaps resolved: later label wins)
    <root>/structuresTr/<case>/<name>.nii.gz one binary mask per structure, overlaps intact
    <root>/metaTr/<case>.json               per-case facts (T stage, source, spacing known ...)
    <root>/imagesTs, labelsTs, structuresTs, metaTs   the same for held-out test cases (optional)

``dataset.json`` holds nnU-Net's keys (``channel_names``, ``labels``, ``numTraining``,
``file_ending``) so the folder can be given to nnU-Net as it is, and an ``npcrepro`` block naming the
structures that have their own masks. Radiotherapy structures overlap (a CTV contains its GTV; a
target covers parts of organs), which a single label map cannot express: the structure masks are the
authority, the label map is a convenience for tools that want one.

A plain nnU-Net raw dataset (no ``npcrepro`` block) opens too: its structures are its labels, each
mask taken from the label map.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from npcrepro import io
from npcrepro.datasets.case import Case
from npcrepro.errors import DataError

FORMAT_VERSION = 1
FILE_ENDING = ".nii.gz"
_SPLITS = {"Tr": "training", "Ts": "test"}


def _ensure_3d(vol: io.Volume, path: Path) -> io.Volume:
    if vol.ndim != 3:
        raise DataError(f"{path}: a 3D image is needed, got a {vol.ndim}D image of shape {vol.shape} "
                        "(store 2D data as (1, y, x) volumes)")
    return vol


class Dataset:
    """A dataset folder opened for reading (see module docstring for the layout).

    Use :func:`open_dataset`. ``cases`` lists training cases, ``test_cases`` the held-out ones;
    ``load(name)`` returns a validated :class:`Case` for either.
    """

    def __init__(self, root: Path, meta: dict):
        self.root = root
        self.meta = meta
        where = root / "dataset.json"
        if not isinstance(meta, dict):
            raise DataError(f"{where}: must hold a JSON object, got {type(meta).__name__}")
        try:
            channel_names = meta["channel_names"]
            labels = meta["labels"]
        except KeyError as exc:
            raise DataError(f"{where}: missing key {exc.args[0]!r}") from None
        self.file_ending: str = _field(where, meta, "file_ending", str, FILE_ENDING, "'.nii.gz'")
        self.channels: list[str] = _channels(where, channel_names)
        self.label_values: dict[str, int | list[int]] = {k: v for k, v in _labels(where, labels).items()
                                                         if k != "background"}
        block = _field(where, meta, "npcrepro", dict, {}, "an object")
        structures = block.get("structures", list(self.label_values))
        if not isinstance(structures, list) or not all(isinstance(s, str) for s in structures):
            raise DataError(f"{where}: field 'npcrepro.structures' must be a list of names, got "
                            f"{_shown(structures)}")
        self.structures: list[str] = list(structures)
        self.has_structure_files: bool = "structures" in block
        self.spacing_known: bool = _field(where, block, "spacing_known", bool, True, "true or false")
        self.source: str = block.get("source", "nnunet")
        self._cases = {sub: self._scan(sub) for sub in _SPLITS}

    # ------------------------------------------------------------------------------ listing
    def _scan(self, sub: str) -> list[str]:
        """Cases of ``images<sub>``/``labels<sub>``: every name with any channel file or a label
        file. DataError naming the first missing channel file when a case lacks one."""
        ending = self.file_ending
        channel_file = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
        names = set()
        for kind in ("images", "labels"):
            folder = self.root / f"{kind}{sub}"
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                m = channel_file.match(p.name) if kind == "images" else None
                if p.name.startswith("."):
                    if m or (kind == "labels" and p.name.endswith(ending)):
                        raise DataError(f"{p}: a case file whose name starts with '.' is hidden on most systems "
                                        "and is not read as a case; rename it (or remove it, if it is a copy "
                                        "tool's leftover such as macOS's '._' files)")
                    continue
                if m:
                    names.add(m.group(1))
                elif kind == "labels" and p.name.endswith(ending):
                    names.add(p.name[: -len(ending)])
        missing = [self.root / f"images{sub}" / f"{n}_{i:04d}{ending}" for n in sorted(names)
                   for i in range(len(self.channels))
                   if not (self.root / f"images{sub}" / f"{n}_{i:04d}{ending}").exists()]
        if missing:
            case, i = missing[0].name[: -len(ending)].rsplit("_", 1)
            more = f" ({len(missing)} channel files missing in all)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: missing channel {self.channels[int(i)]!r} of case "
                            f"{case!r}{more}")
        return sorted(names)

    @property
    def name(self) -> str:
        return self.meta.get("name", self.root.name)

    @property
    def cases(self) -> list[str]:
        """Training case names, sorted."""
        return list(self._cases["Tr"])

    @property
    def test_cases(self) -> list[str]:
        """Held-out (imagesTs) case names, sorted."""
        return list(self._cases["Ts"])

    def __len__(self) -> int:
        return len(self._cases["Tr"])

    def __iter__(self) -> Iterator[Case]:
        for name in self.cases:
            yield self.load(name)

    def __repr__(self) -> str:
        from npcrepro.paths import shown

        return (f"Dataset({shown(self.root)!r}, {len(self)} cases, channels={self.channels}, "
                f"structures={self.structures})")

    def _sub_of(self, name: str) -> str:
        for sub, names in self._cases.items():
            if name in names:
                return sub
        raise DataError(f"{self.root}: no case named {name!r} (cases: {_preview(self.cases)})")

    # ----------------------------------------------------------------------------- loading
    def load(self, name: str, *, channels: Sequence[str] | None = None,
             structures: Sequence[str] | None = None) -> Case:
        """Load and validate one case.

        Parameters
        ----------
        name : str
            A name from :attr:`cases` or :attr:`test_cases`.
        channels, structures : sequence of str, optional
            Load only these (default: all declared).

        Raises
        ------
        DataError
            Missing channel file, corrupt file, geometry mismatch between any two files of the case,
            label values not declared in dataset.json, non-binary structure mask, NaN/inf
            intensities, or a 2D image.
        """
        sub = self._sub_of(name)
        want_channels = list(channels) if channels is not None else self.channels
        for c in want_channels:
            if c not in self.channels:
                raise DataError(f"{self.root / 'dataset.json'}: no channel {c!r} "
                                f"(channels: {self.channels})")
        ref_geometry = None
        images: dict[str, np.ndarray] = {}
        for c in want_channels:
            path = self.root / f"images{sub}" / f"{name}_{self.channels.index(c):04d}{self.file_ending}"
            if not path.exists():
                raise DataError(f"{path}: missing channel {c!r} of case {name!r}")
            vol = _ensure_3d(io.read(path), path)
            if ref_geometry is None:
                ref_geometry = vol.geometry
            else:
                io.check_same_geometry(ref_geometry, vol, f"{path} vs channel {want_channels[0]!r}")
            arr = vol.array.astype(np.float32, copy=False)
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                raise DataError(f"{path}: {bad} NaN/inf intensities")
            images[c] = arr

        labels = self._load_labels(name, sub, structures, ref_geometry)
        if ref_geometry is None:
            raise DataError(f"{self.root}: case {name!r} has no channel to load")
        meta_path = self.root / f"meta{sub}" / f"{name}.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        meta.setdefault("spacing_known", self.spacing_known)
        meta.setdefault("source", self.source)
        meta["split"] = _SPLITS[sub]
        return Case(name, images, labels, ref_geometry.spacing, ref_geometry.origin,
                    ref_geometry.direction, meta)

    def _load_labels(self, name, sub, structures, ref_geometry) -> dict[str, np.ndarray]:
        want = list(structures) if structures is not None else self.structures
        for s in want:
            if s not in self.structures:
                raise DataError(f"{self.root / 'dataset.json'}: no structure {s!r} "
                                f"(structures: {self.structures})")
        labels: dict[str, np.ndarray] = {}
        label_path = self.root / f"labels{sub}" / f"{name}{self.file_ending}"
        label_map = None
        if label_path.exists():
            vol = _ensure_3d(io.read(label_path), label_path)
            io.check_same_geometry(ref_geometry, vol, f"{label_path} vs image")
            label_map = vol.array
            declared = {0} | {int(v) for vals in self.label_values.values()
                              for v in (vals if isinstance(vals, list) else [vals])}
            found = set(np.unique(label_map).astype(int).tolist())
            if found - declared:
                raise DataError(f"{label_path}: label values {sorted(found - declared)} are not "
                                f"declared in dataset.json (declared: {sorted(declared)})")
        if self.has_structure_files:
            folder = self.root / f"structures{sub}" / name
            for s in want:
                path = folder / f"{s}{self.file_ending}"
                if not path.exists():
                    continue  # this patient does not have this structure
                vol = _ensure_3d(io.read(path), path)
                io.check_same_geometry(ref_geometry, vol, f"{path} vs image")
                arr = vol.array
                if not _is_binary(arr):
                    raise DataError(f"{path}: structure mask is not binary "
                                    f"(values {np.unique(arr)[:8].tolist()})")
                labels[s] = arr.astype(bool)
        elif label_map is not None:
            for s in want:
                vals = self.label_values[s]
                mask = np.isin(label_map, vals if isinstance(vals, list) else [vals])
                if mask.any():
                    labels[s] = mask
        return labels


def _is_binary(arr: np.ndarray) -> bool:
    """Whether every value is 0 or 1 (a min/max pass for integers: ``np.isin`` took 0.13 s per
    96 x 512 x 512 mask)."""
    if arr.dtype == bool:
        return True
    if arr.dtype.kind in "ui":
        return arr.size == 0 or (int(arr.min()) >= 0 and int(arr.max()) <= 1)
    return bool(((arr == 0) | (arr == 1)).all())


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float)) else repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _field(where: Path, meta: dict, key: str, kind: type, default, expected: str):
    value = meta.get(key, default)
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} must be {expected}, got {_shown(value)}")
    return value


def _channels(where: Path, channel_names) -> list[str]:
    """``{"0": "CT", "1": "T1"}`` -> ["CT", "T1"]; DataError naming the field otherwise."""
    ok = (isinstance(channel_names, dict) and channel_names
          and all(isinstance(k, str) and k.isdigit() and isinstance(v, str)
                  for k, v in channel_names.items())
          and sorted(int(k) for k in channel_names) == list(range(len(channel_names))))
    if not ok:
        raise DataError(f"{where}: field 'channel_names' must map channel numbers 0, 1, ... to names, "
                        f'e.g. {{"0": "CT", "1": "T1"}}; got {_shown(channel_names)}')
    return [channel_names[k] for k in sorted(channel_names, key=int)]


def _labels(where: Path, labels) -> dict:
    """``labels`` of dataset.json: name -> int or list of ints; DataError naming the field."""
    def value_ok(v):
        return (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v))

    if not isinstance(labels, dict) or not all(isinstance(k, str) and value_ok(v)
                                               for k, v in labels.items()):
        raise DataError(f"{where}: field 'labels' must map names to label values (int or list of "
                        f'ints), e.g. {{"background": 0, "GTVp": 1}}; got {_shown(labels)}')
    return labels


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a dataset folder (project format or plain nnU-Net v2 raw).

    Raises
    ------
    DataError
        The folder or its dataset.json is missing or unreadable, or it holds no cases.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    meta_path = root / "dataset.json"
    if not meta_path.exists():
        raise DataError(f"{meta_path}: missing (not a dataset folder; convert the data first with "
                        "`npcrepro convert` or `npcrepro phantom`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    ds = Dataset(root, meta)
    if not ds.cases and not ds.test_cases:
        raise DataError(f"{root}: no cases found in imagesTr/ or imagesTs/")
    return ds


def write_dataset(out_dir: str | os.PathLike, cases: Iterable[Case], *, channels: Sequence[str],
                  structures: Sequence[str], name: str | None = None, description: str = "",
                  source: str = "unknown", spacing_known: bool = True,
                  test_cases: Iterable[Case] = (), overwrite: bool = False,
                  extra: dict | None = None, progress: bool = False, workers: int = 1) -> Dataset:
    """Write cases in the project format and return the opened dataset.

    Parameters
    ----------
    out_dir : path
        Target folder. It must not exist or be empty unless ``overwrite`` (then it is replaced).
        The dataset is written into a temporary sibling and renamed into place only when complete:
        a failure (a bad case, a full disk, a kill) leaves the previous folder as it was.
    cases, test_cases : iterables of Case, or of picklable zero-argument callables returning one
        Training and held-out cases. Each must carry every channel in ``channels``; structures are
        optional per case (absent ones get no file). A callable ("case factory") is called where the
        case is written, so with ``workers`` > 1 the cases are also made in parallel.
    channels : sequence of str
        Channel order (``_0000`` is ``channels[0]``).
    structures : sequence of str
        Every structure that may appear; also the label map's painting order (later wins).
    extra : dict, optional
        Stored under ``dataset.json["npcrepro"]["extra"]``.
    workers : int
        Processes that make and write cases at once (spawned; 1 writes here, in order). The files
        do not depend on it.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: exists and is not empty (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.writing-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        _write_all(tmp, cases, test_cases, list(channels), list(structures), progress, workers,
                   name=name or out.name, description=description, source=source,
                   spacing_known=spacing_known, extra=extra)
        open_dataset(tmp)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_dataset(out)


def open_cached(folder: str | os.PathLike, extra) -> Dataset | None:
    """The dataset at ``folder`` when :func:`write_dataset` wrote it with this ``extra`` record, else
    None (missing, unreadable, or written from another record: a stale cache)."""
    folder = Path(folder)
    if not (folder / "dataset.json").exists():
        return None
    try:
        ds = open_dataset(folder)
    except DataError:
        return None
    return ds if ds.meta.get("npcrepro", {}).get("extra") == extra else None


def replace_folder(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target`` (a sibling), replacing what is there.

    The old ``target`` is set aside first and deleted only after ``new`` is in place, so a failure
    at any point leaves either the old folder or the new one, never a half-written one.
    """
    old = None
    if target.exists():
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_all(out: Path, cases, test_cases, channels: list[str], structures: list[str],
               progress: bool, workers: int = 1, **facts) -> None:
    items = ((out, sub, case, channels, structures)   # lazily: one case in memory at a time
             for sub, it in (("Tr", cases), ("Ts", test_cases)) for case in it)
    if workers > 1:
        items = list(items)
    counts = {"Tr": 0, "Ts": 0}
    bar = None
    if progress:
        from npcrepro.paths import progress_bar as tqdm
        bar = tqdm(total=len(items) if isinstance(items, list) else None, desc="writing cases",
                   unit="case")
    try:
        for sub in _written(items, workers):
            counts[sub] += 1
            if bar is not None:
                bar.update()
    finally:  # a bar left open is drawn again at exit, over the error message
        if bar is not None:
            bar.close()
    meta = {
        "name": facts["name"],
        "description": facts["description"],
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, **{s: i for i, s in enumerate(structures, start=1)}},
        "numTraining": counts["Tr"],
        "file_ending": FILE_ENDING,
        "npcrepro": {"format_version": FORMAT_VERSION, "structures": structures,
                     "source": facts["source"], "spacing_known": facts["spacing_known"],
                     "numTest": counts["Ts"], "extra": facts["extra"] or {}},
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _written(items, workers: int) -> Iterator[str]:
    """Write every item (in ``workers`` spawned processes when > 1: pass case factories, not cases,
    so that the cases are also made there); yields each one's split as it is done. A failure
    cancels the items not started and is raised as it is, as in one process."""
    if workers <= 1 or len(items) < 2:
        yield from map(_write_item, items)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_write_item, item) for item in items]
        try:
            for f in cf.as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _write_item(item: tuple) -> str:
    """Job of :func:`_write_all`: make the case if it is a factory, write it; its split ("Tr"/"Ts")."""
    out, sub, case, channels, structures = item
    _write_case(out, sub, case if isinstance(case, Case) else case(), channels, structures)
    return sub


def _bounds(image: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a non-empty float image, else None. Both are finite exactly when every value is:
    min and max propagate NaN, and an infinity is one of them."""
    if image.dtype.kind != "f" or not image.size:
        return None
    return float(image.min()), float(image.max())


def stored(image: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """How an image channel is written: a float image whose values are all whole numbers within int16
    (CT in HU, MR magnitudes as scanners store them) as int16, which holds them exactly, compresses
    to a quarter of float32 noise's bytes in a quarter of its time; any other float image as
    float32; integer images as they are. Reading gives float32 either way (:meth:`Dataset.load`).
    ``bounds``: the image's :func:`_bounds`, where the caller has them."""
    if image.dtype.kind != "f":
        return image
    bounds = bounds or _bounds(image)
    if bounds and -32768 <= bounds[0] and bounds[1] <= 32767:
        whole = image.astype(np.int16)
        if np.array_equal(whole, image):
            return whole
    return image.astype(np.float32, copy=False)


def _write_case(out: Path, sub: str, case: Case, channels: list[str], structures: list[str]) -> None:
    missing = [c for c in channels if c not in case.images]
    if missing:
        raise DataError(f"case {case.name}: missing channel(s) {missing}")
    unknown = [s for s in case.labels if s not in structures]
    if unknown:
        raise DataError(f"case {case.name}: structures {unknown} are not declared "
                        f"(declared: {structures})")
    if len(case.shape) != 3:
        raise DataError(f"case {case.name}: arrays must be 3D (z, y, x), got {case.shape}")
    g = case.geometry
    for i, c in enumerate(channels):
        arr = np.asarray(case.images[c])
        bounds = _bounds(arr)
        if bounds and not (math.isfinite(bounds[0]) and math.isfinite(bounds[1])):
            raise DataError(f"case {case.name}: channel {c!r} has NaN/inf values")
        io.write(io.Volume.on_grid(stored(arr, bounds), g), out / f"images{sub}" / f"{case.name}_{i:04d}{FILE_ENDING}")
    io.write(io.Volume.on_grid(case.label_map(structures), g),
             out / f"labels{sub}" / f"{case.name}{FILE_ENDING}")
    for s, mask in case.labels.items():
        mask = np.asarray(mask)
        io.write(io.Volume.on_grid(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8), g),
                 out / f"structures{sub}" / case.name / f"{s}{FILE_ENDING}")
    meta_dir = out / f"meta{sub}"
    meta_dir.mkdir(exist_ok=True)
    (meta_dir / f"{case.name}.json").write_text(json.dumps(_jsonable(case.meta), indent=2), encoding="utf-8")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _preview(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")
