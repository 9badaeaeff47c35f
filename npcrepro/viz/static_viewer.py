"""A volume viewer that works without a kernel: NiiVue over NIfTI files copied into the built book.

The live explorer (:class:`npcrepro.viz.Explorer`) computes every picture in Python, so the static
book can only show the view saved when the page was executed. This module exports what the reader
needs to browse on their own -- for a few cases of each run, every image channel (up to a limit),
the ground-truth structures and every prediction as NIfTI -- plus a ``manifest.json`` that lists them,
and writes the HTML that puts a viewer on the page. In the browser, ``book/_static/npcviewer/viewer.js``
(an ES module) reads the manifest and draws the volumes with NiiVue (``@niivue/niivue``, WebGL2,
vendored by :mod:`npcrepro.webassets`): slices in three planes, the channel, ground truth and each
prediction toggled, one opacity for the overlays, filled or outlined.

The input is data, not a run folder: :func:`export` takes a list of :class:`ViewerRun` (each a list
of :class:`ViewerCase`: image channels, ground-truth masks and predictions as arrays on one grid), so
the source can change without touching the export. :func:`run_from_view` builds one from the
explorer's :class:`~npcrepro.viz.runs.RunView`, :func:`runs_for_book` picks the runs the explorer page
shows (the leaderboard's and each chapter's newest).

Files and the build:

* :func:`export` writes ``<dest>/<digest>/`` (a temporary sibling renamed when complete; the digest
  is a hash of the contents, so a new export never overwrites an old one) and returns its manifest.
* The explorer notebook exports to ``<out_dir>/<profile>/_viewer/`` (beside the run folders it reads)
  and displays :func:`page_html`, which names the manifest as ``_viewer/<digest>/manifest.json``
  relative to the page.
* :func:`publish` (called by :func:`npcrepro.book.build_html`) copies the export folders that the
  executed notebooks name into ``_build/html/book/runs/<profile>/_viewer/``: Sphinx itself copies
  only the pages and ``_static``.

The NIfTI files are display copies written with the case's grid (spacing and direction; origin 0, so
every layer of a case lines up): images quantised to 8 bits over their display window (the window is
in the manifest), masks as uint8. Predictions that are not on the case grid (li2018's slice stacks)
are first mapped onto it by :meth:`RunView.prediction`, which says so in a note shown beside them.
Browsers refuse ``fetch`` from ``file://`` pages, so the viewer needs the book served over HTTP
(GitHub Pages, or ``python -m http.server -d _build/html``); opened as a file it says so.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from npcrepro.errors import DataError, NpcreproError

__all__ = ["ViewerCase", "ViewerRun", "export", "page_html", "publish", "run_from_view",
           "runs_for_book", "EXPORT_DIR", "MANIFEST", "VIEWER_JS"]

#: The export folder's name, under the runs of a profile and next to the built page.
EXPORT_DIR = "_viewer"
MANIFEST = "manifest.json"
#: The viewer script, relative to ``_static`` (committed in book/_static/npcviewer/).
VIEWER_JS = "npcviewer/viewer.js"
#: Colour of the ground truth (as in the live explorer).
GT_COLOUR = "#ffe000"
#: Image voxels exported per case, all channels together: paper-scale volumes (gpu profile, 96 x 512 x
#: 512) keep only their default channel, so that a published book stays well under GitHub Pages' 1 GB.
MAX_IMAGE_VOXELS = 32_000_000
_DIGEST = re.compile(r"_viewer/([0-9a-f]{16})/manifest\.json")


@dataclass
class ViewerCase:
    """One case as the viewer shows it. Every array is (z, y, x) on the same grid.

    Attributes
    ----------
    name : str
        Case name (shown in the case menu).
    images : mapping of str to ndarray
        Channel name -> image (float; quantised to 8 bits over ``windows[channel]`` on export).
    ground_truth : mapping of str to ndarray
        Structure name -> reference mask.
    predictions : mapping of str to ndarray
        Prediction label -> mask.
    spacing : tuple of float
        Voxel size (z, y, x) in mm.
    direction : ndarray
        3 x 3 direction cosines in array order (identity by default).
    windows : dict
        Channel -> (low, high) display window (default: 0.5-99.5 percentiles).
    scores : dict
        Prediction label -> DSC for this case (shown beside the label), where known.
    notes : dict
        Prediction label -> one line on how it was mapped onto the case grid.
    default_channel, default_structure : str or None
        What the viewer shows first.
    focus : tuple of int or None
        (z, y, x) voxel shown first (default: the middle of the volume).
    """

    name: str
    images: Mapping[str, np.ndarray]
    ground_truth: Mapping[str, np.ndarray]
    predictions: Mapping[str, np.ndarray]
    spacing: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    windows: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    default_channel: str | None = None
    default_structure: str | None = None
    focus: tuple[int, int, int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        first = next(iter(self.images.values()), None)
        if first is None:
            raise DataError(f"viewer case {self.name!r}: no image channel")
        return tuple(np.shape(first))  # type: ignore[return-value]

    def check(self) -> None:
        """DataError naming the layer whose shape is not the case grid (or a case without images)."""
        shape = self.shape
        if len(shape) != 3:
            raise DataError(f"viewer case {self.name!r}: images must be (z, y, x), got shape {shape}")
        for kind, layers in (("image", self.images), ("ground truth", self.ground_truth),
                             ("prediction", self.predictions)):
            for key, arr in layers.items():
                if tuple(np.shape(arr)) != shape:
                    raise DataError(f"viewer case {self.name!r}: {kind} {key!r} has shape "
                                    f"{tuple(np.shape(arr))}, not the case grid {shape}")


@dataclass
class ViewerRun:
    """One run in the viewer's run menu: a ``label`` (e.g. ``leaderboard/20260101-120000-cpu``), a
    one-line ``description``, its cases, and a colour per prediction label."""

    label: str
    cases: list[ViewerCase]
    colours: dict[str, str] = field(default_factory=dict)
    description: str = ""


# ------------------------------------------------------------------------------------ export
def _quantise(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = (float(w) for w in window)
    a = (np.asarray(image, np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.nan_to_num(a, nan=0.0), 0, 255).round().astype(np.uint8)


def _write(arr: np.ndarray, case: ViewerCase, path: Path) -> None:
    from npcrepro import io

    io.write(io.Volume(np.ascontiguousarray(arr), case.spacing, (0.0, 0.0, 0.0), case.direction), path)


def _focus_ras(case: ViewerCase, index: Sequence[int]) -> list[float]:
    """The world position (RAS mm, as NIfTI and NiiVue use) of voxel ``index`` (z, y, x) of a grid
    with origin 0 written by :func:`npcrepro.io.write` (LPS, SimpleITK's convention)."""
    zyx = (np.asarray(index, float) * np.asarray(case.spacing, float)) @ np.asarray(case.direction, float).T
    x, y, z = zyx[::-1]
    return [round(float(-x), 4), round(float(-y), 4), round(float(z), 4)]


def _case_entry(case: ViewerCase, folder: Path, rel: str, colours: Mapping[str, str]) -> dict:
    from npcrepro.viz.render import intensity_window

    case.check()
    folder.mkdir(parents=True, exist_ok=True)
    channels = []
    for i, (ch, img) in enumerate(case.images.items()):
        window = tuple(case.windows.get(ch) or intensity_window(img))
        _write(_quantise(img, window), case, folder / f"c{i}.nii.gz")
        channels.append({"name": ch, "url": f"{rel}/c{i}.nii.gz",
                         "window": [round(float(w), 4) for w in window]})
    structures = []
    for i, (name, mask) in enumerate(case.ground_truth.items()):
        _write(np.asarray(mask, bool).astype(np.uint8), case, folder / f"g{i}.nii.gz")
        structures.append({"name": name, "url": f"{rel}/g{i}.nii.gz",
                           "voxels": int(np.count_nonzero(mask))})
    predictions = []
    for i, (label, mask) in enumerate(case.predictions.items()):
        _write(np.asarray(mask, bool).astype(np.uint8), case, folder / f"p{i}.nii.gz")
        score = case.scores.get(label)
        predictions.append({"label": label, "url": f"{rel}/p{i}.nii.gz",
                            "colour": colours.get(label, "#00d5ff"),
                            "dsc": None if score is None else round(float(score), 4),
                            "note": case.notes.get(label, ""),
                            "voxels": int(np.count_nonzero(mask))})
    shape = case.shape
    focus = tuple(case.focus) if case.focus is not None else tuple(s // 2 for s in shape)
    names = [c["name"] for c in channels]
    return {"name": case.name, "shape": list(shape), "spacing": [float(s) for s in case.spacing],
            "channels": channels, "structures": structures, "predictions": predictions,
            "default_channel": case.default_channel if case.default_channel in names else names[0],
            "default_structure": (case.default_structure
                                  if case.default_structure in case.ground_truth else None),
            "focus": [int(v) for v in focus], "focus_ras": _focus_ras(case, focus),
            "is_2d": shape[0] == 1}


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def export(runs: Sequence[ViewerRun], dest: str | os.PathLike, *, title: str = "") -> Path:
    """Write the NIfTI layers and ``manifest.json`` of ``runs`` into ``<dest>/<digest>/`` and return
    the manifest's path.

    The folder is written under a temporary name and renamed when complete; its name is a hash of
    its contents, so exporting the same data twice gives the same folder and a different export
    never replaces another. Runs without cases are left out; DataError when no run has a case, or a
    layer is not on its case's grid.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".export-{uuid.uuid4().hex[:8]}"
    try:
        entries = []
        for r, run in enumerate(runs):
            if not run.cases:
                continue
            cases = [_case_entry(c, tmp / f"r{r}" / f"k{k}", f"r{r}/k{k}", run.colours)
                     for k, c in enumerate(run.cases)]
            entries.append({"label": run.label, "description": run.description, "cases": cases})
        if not entries:
            raise DataError("static viewer: no run with a case to export")
        manifest = {"version": 1, "title": title, "runs": entries}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        final = dest / _tree_digest(tmp)
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / MANIFEST


# ------------------------------------------------------------------------------------ page
def page_html(manifest: str | os.PathLike, *, page_dir: str | os.PathLike = "book/runs/cpu",
              height: int = 560) -> str:
    """The HTML that puts a viewer on a page: a container naming the manifest, and the viewer module.

    ``manifest`` is an export's manifest (:func:`export`); the page names it where :func:`publish`
    puts it in the build, ``_viewer/<digest>/manifest.json`` next to the page. ``page_dir`` is the
    page's folder relative to the book root (``book/runs/<profile>``; only its depth matters): the
    script is ``_static/npcviewer/viewer.js`` at the root. Both URLs are relative, so the site works
    under any base URL."""
    digest = Path(manifest).parent.name
    manifest_rel = f"{EXPORT_DIR}/{digest}/{MANIFEST}"
    up = "../" * len(Path(page_dir).parts)
    script = f"{up}_static/{VIEWER_JS}"
    return (f'<div class="npc-viewer" data-manifest="{html.escape(manifest_rel, quote=True)}" '
            f'style="min-height:{int(height)}px">'
            '<p class="npc-viewer-fallback">The volume viewer needs JavaScript, WebGL2 and the book '
            'served over HTTP (a page opened as a file cannot read its data).</p></div>\n'
            f'<script type="module" src="{html.escape(script, quote=True)}"></script>')


def referenced_exports(notebooks: Iterable[Path]) -> set[str]:
    """The export digests (``_viewer/<digest>/manifest.json``) that these executed notebooks name."""
    found: set[str] = set()
    for nb in notebooks:
        try:
            found.update(_DIGEST.findall(Path(nb).read_text(encoding="utf-8")))
        except OSError:
            continue
    return found


def publish(runs_dir: str | os.PathLike, html_dir: str | os.PathLike,
            sources: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Copy the viewer exports that the executed notebooks in ``runs_dir`` name from the first of
    ``sources`` (export folders, e.g. ``runs/<profile>/_viewer``) that has them into the built
    site's ``<html_dir>/_viewer/<digest>/``. Returns (the copied folders, one line per export that a
    page names but no source has: such a page's viewer says that it cannot load its data, as it
    does for executed notebooks committed without their runs)."""
    runs_dir, html_dir = Path(runs_dir), Path(html_dir)
    out, missing = [], []
    for digest in sorted(referenced_exports(runs_dir.glob("*.ipynb"))):
        src = next((Path(d) / digest for d in sources if (Path(d) / digest / MANIFEST).is_file()), None)
        if src is None:
            missing.append(f"viewer export {digest}, named by a page in {runs_dir}, is in none of "
                           f"{', '.join(map(str, sources))} (re-run the explorer chapter)")
            continue
        dst = html_dir / EXPORT_DIR / digest
        if not (dst / MANIFEST).is_file():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        out.append(dst)
    return out, missing


# ------------------------------------------------------------------------------------ runs -> cases
def run_from_view(view, *, n_cases: int = 3, max_channels: int = 4, max_structures: int = 6,
                  cases: Sequence[str] | None = None) -> ViewerRun:
    """A :class:`ViewerRun` from a :class:`~npcrepro.viz.runs.RunView`: ``cases`` (default the
    ``n_cases`` with the most predictions, the run's default case first) with the default channel
    first and at most ``max_channels`` channels (fewer for paper-scale volumes, see
    :data:`MAX_IMAGE_VOXELS`), the structures that the predictions name plus the
    default one (at most ``max_structures``), and every prediction on the case grid. Cases that
    cannot be loaded are left out (so are predictions that cannot be shown, with a note)."""
    if cases is None:
        first = view.default_case()
        ranked = sorted((c for c in view.cases if c != first),
                        key=lambda c: -len(view.predictions.get(c, {})))
        cases = ([first] if first else []) + ranked
    colours = view.colours()
    out: list[ViewerCase] = []
    for name in cases:
        if len(out) >= n_cases:
            break
        try:
            out.append(_viewer_case(view, name, max_channels, max_structures))
        except NpcreproError:
            continue
    desc = f"{view.paper}, {view.profile} profile, data {view.params.get('data', '?')}"
    return ViewerRun(view.label, out, colours, desc)


def _viewer_case(view, name: str, max_channels: int, max_structures: int) -> ViewerCase:
    cv = view.case(name)
    first = cv.default_channel or cv.channels[0]
    budget = max(1, min(max_channels, MAX_IMAGE_VOXELS // max(1, int(np.prod(cv.shape)))))
    chans = [first] + [c for c in cv.channels if c != first][: budget - 1]
    images = {c: cv.image(c) for c in chans}
    preds, scores, notes = {}, {}, {}
    for label in view.labels_for(name):
        mask, _, note = view.prediction(name, label)
        if mask is None:
            continue
        preds[label] = mask
        if note:
            notes[label] = note
        d = view.score_for(name, label)
        if d is not None:
            scores[label] = d
    # the structure each prediction is of (``stem`` here; ``structure`` on a Results-based RunView)
    stems = [getattr(p, "structure", None) or getattr(p, "stem", None)
             for p in view.predictions.get(name, {}).values()]
    wanted = [cv.default_structure] + stems + list(cv.labels)
    gt = {}
    for s in dict.fromkeys(w for w in wanted if w and w in cv.labels):
        if len(gt) >= max_structures:
            break
        gt[s] = np.asarray(cv.labels[s], bool)
    z = view.best_axial_slice(name, cv.default_structure, list(preds) or None)
    mask = gt.get(cv.default_structure)
    y, x = (cv.shape[1] // 2, cv.shape[2] // 2)
    if mask is not None and mask[z].any():
        ys, xs = np.nonzero(mask[z])
        y, x = int(np.median(ys)), int(np.median(xs))
    return ViewerCase(cv.name, images, gt, preds, tuple(cv.spacing), np.asarray(cv.direction, float),
                      windows={c: cv.window(c) for c in chans}, scores=scores, notes=notes,
                      default_channel=first, default_structure=cv.default_structure, focus=(z, y, x))


def runs_for_book(out_dir: str | os.PathLike, profile: str, *, prefer: Mapping | None = None,
                  papers: Sequence[str] | None = None, n_cases: int = 3) -> list[ViewerRun]:
    """The runs the explorer page's viewer offers: for each paper with runs under
    ``<out_dir>/<profile>`` (the leaderboard first) its newest run with predictions (else its newest),
    preferring runs whose parameters match ``prefer``; ``n_cases`` cases each. [] without runs."""
    from npcrepro.viz.runs import default_run, list_runs

    try:
        views = list_runs(out_dir, profile)
    except DataError:
        return []
    by_paper: dict[str, list] = {}
    for v in views:
        by_paper.setdefault(v.path.parent.name, []).append(v)
    order = sorted(by_paper, key=lambda p: (p != "leaderboard", p))
    if papers is not None:
        order = [p for p in order if p in papers]
    out = []
    for paper in order:
        run = run_from_view(default_run(by_paper[paper], prefer), n_cases=n_cases)
        if run.cases:
            out.append(run)
    return out
