"""Profiles (named sets of sizes) and notebook parameters.

Every notebook's ``parameters`` cell holds the common parameters

==========  ==========  ===========================================================================
name        default     meaning
==========  ==========  ===========================================================================
profile     "cpu"       "smoke" (seconds, for tests), "cpu" (the book, minutes on 2 cores),
                        "gpu" (paper scale), "gpu-lite" (the gpu sizes on fewer patients and
                        iterations: the book in under an hour on one GPU)
data        "phantom"   "phantom" (generate or reuse the digital phantom) or a dataset folder
device      "auto"      "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N"
seed        0           seeds data generation, splits, initialisation, sampling
out_dir     "runs"      root of run folders (``<out_dir>/<profile>/<paper>/<stamp>-<name>/``)
resume      ""          a run folder to continue (its checkpoint_last.pt)
==========  ==========  ===========================================================================

plus per-paper overrides, which are the sizes the paper registered with :func:`register_profile`
(``n_cases``, ``image_size``, ``epochs``/``iterations``, ``batch_size`` ...). A profile only sets
sizes; the code path is the same. In the parameters cell per-paper overrides are ``None`` ("take the
profile's value").

A notebook uses them like this::

    # first code cell, after the imports
    _before = set(globals())
    # parameters cell (tagged "parameters"); papermill injects its own cell after it
    profile = "cpu"; data = "phantom"; device = "auto"; seed = 0; out_dir = "runs"
    # next cell
    P = notebook_params("template", globals(), _before)

:func:`notebook_params` rejects any new global name that is not a declared parameter (papermill
injects unknown names without complaint), and :func:`resolve` rejects unknown names and invalid
values, each with one :class:`~npcrepro.errors.ParameterError` listing the valid ones.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any, Iterator, Sequence

from npcrepro.errors import DataError, ParameterError, did_you_mean
from npcrepro.paths import build_once

__all__ = ["PROFILES", "COMMON", "Params", "register_profile", "register_choices", "papers",
           "profiles", "parameters", "resolve", "notebook_params", "resolve_device", "load_data",
           "phantom_cache_dir", "absolute_paths", "PATH_PARAMETERS", "RANGES", "size_range"]

PROFILES = ("smoke", "cpu", "gpu", "gpu-lite")

#: The phantom preset a profile generates (:data:`npcrepro.phantom.PRESETS`) where the names differ.
PHANTOM_PRESETS = {"gpu-lite": "gpu"}

#: Common parameters and their defaults.
COMMON: dict[str, Any] = {"profile": "cpu", "data": "phantom", "device": "auto", "seed": 0,
                          "cohort": "evaluation", "out_dir": "runs", "resume": ""}

#: The phantom's cohorts -> the index of their first patient. Recipes are chosen on the development
#: cohort (its patients ``npc_000``...); the book reports on the evaluation cohort (``npc_1000``...),
#: patients of the same population that no development run has seen. Real datasets have no cohort.
COHORTS = {"development": 0, "evaluation": 1000}

_SIZES: dict[str, dict[str, dict[str, Any]]] = {}
_CHOICES: dict[str, dict[str, tuple]] = {}
#: A page's own defaults of common parameters (its recipe's ``DEFAULTS``).
_DEFAULTS: dict[str, dict[str, Any]] = {}

#: Parameters that name a file or folder -> the words they take instead of a path. :func:`resolve`
#: makes such a path absolute (against the working directory), so ``params.json`` records where
#: the data and runs were whatever the directory a notebook later runs in; the CLI does it first,
#: against the directory the user ran the command in (:func:`absolute_paths`). Explorer's ``run``
#: may also be a label (``paper/stamp-name``): it is made absolute only when that path exists.
PATH_PARAMETERS: dict[str, tuple[str, ...]] = {
    "data": ("phantom", "auto"), "out_dir": (), "resume": ("",), "real_data": ("auto", "off", "openkbp"),
    "run": ("",),
}
_LABEL_OR_PATH = ("run",)

#: The range of a numeric size (or of each number in a list size), inclusive; None is unbounded.
#: A size not named here must be >= 1 (int) or > 0 (float): counts, budgets, batch and image sizes,
#: widths, learning rates, spacings. It may be 0 where some registered profile of the paper sets it
#: to 0 (e.g. ``real_cases=0``: no real-data track). :func:`resolve` checks them all before a
#: chapter writes anything.
RANGES: dict[str, tuple[float | None, float | None]] = {
    # fractions and probabilities
    "background_fraction": (0, 1), "fg_prob": (0, 1), "negative_prob": (0, 1), "val_fraction": (0, 1),
    "overlap": (0, 0.99),
    "threshold": (0, 1), "fusion_weight": (0, 1), "focal_alpha": (0, 1), "beta": (0, 1),
    "prior": (0, 1), "lr_gamma": (0, 1), "lr_factor": (0, 1),
    # 0 means "none": no augmentation, no warm-up, no validation, skip the faithful mode
    "rotate_deg": (0, 180), "jitter_mm": (0, None), "shift": (0, None), "warmup_epochs": (0, None),
    "grad_clip": (0, None), "warmup": (0, 0.5), "ema": (0, 0.9999), "bn_fixed_3d": (0, 0.9),
    "n_val": (0, None), "faithful_folds": (0, None), "figure_cases": (0, None),
    "min_lesion_mm": (0, None), "cross_fit": (0, None), "bn_batches": (0, None), "real_test": (0, None),
    # folds of a k-fold cross-validation
    "k": (2, None), "k_folds": (2, None), "real_k": (2, None),
}

_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)

#: The largest ``seed``: numpy's legacy seeding takes 32 bits, and the seeds derived from it (per rank,
#: stage, epoch, patient) stay within what torch's and numpy's generators take.
MAX_SEED = 2**32 - 1


class Params(Mapping):
    """Resolved parameters: a read-only mapping with attribute access (``P.seed``, ``P["seed"]``)."""

    __slots__ = ("_d",)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_d", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r} (have: {', '.join(self._d)})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Params are read-only; use resolve(...) or P.replace(...)")

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __reduce__(self):
        return (Params, (self._d,))

    def __repr__(self) -> str:
        return "Params(" + ", ".join(f"{k}={v!r}" for k, v in self.shown().items()) + ")"

    def shown(self) -> dict:
        """The values as a page shows them: a path parameter relative to the repository
        (:func:`npcrepro.paths.shown`: ``runs``, not the folder of the machine that built the book)."""
        from npcrepro.paths import shown

        return {k: shown(v) if k in PATH_PARAMETERS and isinstance(v, str) and v not in PATH_PARAMETERS[k] else v
                for k, v in self._d.items()}

    def to_dict(self) -> dict:
        return dict(self._d)

    def replace(self, **changes) -> "Params":
        """A re-resolved copy with some values changed (validated like :func:`resolve`)."""
        d = {k: v for k, v in self._d.items() if k != "paper"}
        d.update(changes)
        return resolve(self._d["paper"], **d)


# ---------------------------------------------------------------------------------- registry
def register_profile(paper: str, profile: str, **sizes) -> None:
    """Declare (or update) the sizes of ``paper`` under ``profile``.

    Every name used in any profile of a paper becomes one of its parameters; a name missing from a
    profile defaults to None there. Values should be plain (str, int, float, bool, None, list/tuple,
    dict) so they can travel through papermill and params.json.
    """
    if not paper or not isinstance(paper, str):
        raise ParameterError(f"paper must be a non-empty string, got {paper!r}")
    clash = set(sizes) & set(COMMON)
    if clash:
        raise ParameterError(f"{paper}: {sorted(clash)} are common parameters, not sizes")
    for k, v in sizes.items():
        if not isinstance(v, _PLAIN):
            raise ParameterError(f"{paper}/{profile}: size {k!r} must be a plain value, got {type(v).__name__}")
    _SIZES.setdefault(paper, {}).setdefault(profile, {}).update(sizes)


def register_choices(paper: str, **choices: Sequence) -> None:
    """Restrict parameters of ``paper`` to given values, e.g. ``register_choices("template",
    channel=["CT", "T1"])`` (a list parameter: each of its items)."""
    _CHOICES.setdefault(paper, {}).update({k: tuple(v) for k, v in choices.items()})


def papers() -> list[str]:
    """Papers (chapters) with registered profiles."""
    _load_papers()
    return sorted(_SIZES)


def profiles(paper: str) -> list[str]:
    """Profiles of ``paper`` (the standard three first)."""
    sizes = _paper_sizes(paper)
    return [p for p in PROFILES if p in sizes] + sorted(p for p in sizes if p not in PROFILES)


def parameters(paper: str, profile: str = "cpu") -> dict[str, Any]:
    """All parameters of ``paper`` with their defaults under ``profile``."""
    sizes = _paper_sizes(paper)
    if profile not in sizes:
        raise ParameterError(f"unknown profile {profile!r} for {paper} (valid: {', '.join(profiles(paper))})")
    names = _size_names(paper)
    out = dict(COMMON, **_DEFAULTS.get(paper, {}), profile=profile)
    out.update({k: sizes[profile].get(k) for k in names})
    return out


def _size_names(paper: str) -> list[str]:
    names: list[str] = []
    for prof in _paper_sizes(paper).values():
        names += [k for k in prof if k not in names]
    return names


_papers_loaded = False


def _load_papers() -> None:
    """Register every chapter's profiles from its recipe module (:mod:`npcrepro.recipes`): plain
    data, so learning a chapter's parameters imports no chapter code."""
    global _papers_loaded
    if _papers_loaded:
        return
    _papers_loaded = True
    from npcrepro import recipes

    for name in recipes.CHAPTERS:
        mod = recipes.load(name)
        for profile, sizes in mod.PROFILES.items():
            register_profile(name, profile, **sizes)
        if mod.ALLOWED:
            register_choices(name, **mod.ALLOWED)
        unknown = sorted(set(mod.DEFAULTS) - set(COMMON))
        if unknown:
            raise ParameterError(f"{name}: DEFAULTS names {unknown}, which are not common parameters")
        _DEFAULTS[name] = dict(mod.DEFAULTS)


def _paper_sizes(paper: str) -> dict[str, dict[str, Any]]:
    _load_papers()  # the recipe modules first, whatever registered before
    if paper not in _SIZES:
        raise ParameterError(f"unknown paper {paper!r} (valid: {', '.join(sorted(_SIZES))})")
    return _SIZES[paper]


# ---------------------------------------------------------------------------------- resolution
def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def resolve(paper: str, profile: str = "cpu", **overrides) -> Params:
    """The parameters of ``paper`` under ``profile`` with ``overrides`` applied.

    ``None`` overrides mean "the profile's value". Raises :class:`ParameterError` (one line, listing
    the valid names or values) for an unknown paper, profile, parameter name, a value of the wrong
    type, a value outside registered choices, or an unusable device. Data paths are checked later
    by :func:`load_data` (DataError).
    """
    sizes = _paper_sizes(paper)
    if profile not in sizes:
        raise ParameterError(f"unknown profile {profile!r} for {paper} (valid: {', '.join(profiles(paper))})")
    defaults = parameters(paper, profile)
    sizes_names = [k for k in defaults if k not in COMMON]
    unknown = [k for k in overrides if k not in defaults]
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r} for {paper} (valid: {', '.join(defaults)})."
                             + did_you_mean(unknown[0], defaults))
    values = dict(defaults)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, Path):
            v = str(v)
        ref = COMMON[k] if k in COMMON else defaults[k]
        if ref is None:  # a size that is None in this profile: take the type of any other profile
            ref = next((p[k] for p in sizes.values() if p.get(k) is not None), None)
        if not _type_ok(v, ref):
            raise ParameterError(f"parameter {k!r} of {paper} must be {type(ref).__name__}, got "
                                 f"{type(v).__name__} {v!r}")
        values[k] = v
    for k, options in _CHOICES.get(paper, {}).items():  # a list parameter: each of its items
        v = values.get(k)
        bad = [x for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None and x not in options]
        if bad:
            each = " (each item)" if isinstance(v, (list, tuple)) else ""
            raise ParameterError(f"parameter {k!r} of {paper} must be one of {list(options)}{each}, got {v!r}")
    for k, v in list(values.items()):
        if isinstance(v, tuple):
            values[k] = list(v)
        if isinstance(defaults.get(k), float) and isinstance(v, int) and not isinstance(v, bool):
            values[k] = float(v)
    for k in sizes_names:
        _check_items(paper, k, values[k], [prof.get(k) for prof in sizes.values()])
        _check_range(paper, k, values[k])
    if not isinstance(values["data"], str) or not values["data"]:
        raise ParameterError(f"parameter 'data' must be 'phantom' or a dataset folder, got {values['data']!r}")
    seed = values["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ParameterError(f"parameter 'seed' must be an int in [0, {MAX_SEED}], got {seed!r}")
    first_patient(values)  # ParameterError for a cohort that does not exist
    values["device"] = str(resolve_device(values["device"]))
    values["out_dir"] = str(values["out_dir"])
    values["resume"] = str(values["resume"] or "")
    return Params({"paper": paper, **absolute_paths(values)})


def absolute_paths(params: Mapping[str, Any], base: str | os.PathLike | None = None) -> dict:
    """``params`` with every :data:`PATH_PARAMETERS` value that is a path made absolute against
    ``base`` (default: the working directory). Words (``"phantom"``, ``""`` ...) stay as they are."""
    base = Path(base) if base is not None else Path.cwd()
    out = dict(params)
    for k, v in params.items():
        if k not in PATH_PARAMETERS or not isinstance(v, str) or v in PATH_PARAMETERS[k]:
            continue
        path = Path(v).expanduser()
        if not path.is_absolute():
            if k in _LABEL_OR_PATH and not (base / path).exists():
                continue
            path = base / path
        out[k] = os.path.normpath(path)
    return out


def size_range(paper: str, name: str) -> tuple[float | None, float | None]:
    """The inclusive (low, high) range of size ``name`` of ``paper`` (see :data:`RANGES`)."""
    if name in RANGES:
        return RANGES[name]
    registered = [v for prof in _paper_sizes(paper).values() for v in _numbers(prof.get(name))]
    return (0, None) if 0 in registered else (1, None)


def _numbers(value) -> list:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _kind(x) -> str | None:
    return ("bool" if isinstance(x, bool) else "int" if isinstance(x, int) else "number" if isinstance(x, float)
            else "str" if isinstance(x, str) else None)


def _check_items(paper: str, name: str, value, registered: list) -> None:
    """A list parameter holds what its profiles hold: items of their kind (ints, numbers, strings,
    booleans), and some at all unless a profile registers it empty."""
    lists = [r for r in registered if isinstance(r, (list, tuple))]
    if not lists or not isinstance(value, (list, tuple)):
        return
    if not value and all(lists):
        raise ParameterError(f"parameter {name!r} of {paper} must not be empty (e.g. {list(lists[0])!r})")
    kinds = {_kind(x) for r in lists for x in r}
    if not kinds or None in kinds:
        return  # nested lists, dicts: checked where they are read
    want = {"int", "number"} if kinds <= {"int", "number"} and "number" in kinds else kinds
    bad = [x for x in value if _kind(x) not in want]
    if bad:
        what = "numbers" if "number" in want else " or ".join(sorted(f"{k}s" for k in want))
        raise ParameterError(f"parameter {name!r} of {paper} must be a list of {what}, got {list(value)!r} "
                             f"(item {bad[0]!r})")


def _check_range(paper: str, name: str, value) -> None:
    low, high = size_range(paper, name)
    for v in _numbers(value):
        positive_float = isinstance(v, float) and low == 1 and name not in RANGES
        bad = (not math.isfinite(v) or (v <= 0 if positive_float else low is not None and v < low)
               or (high is not None and v > high))
        if bad:
            want = ("> 0" if positive_float else f"in [{low}, {high}]" if high is not None
                    else f">= {low}")
            shown = f"{value!r} (item {v!r})" if isinstance(value, (list, tuple)) else repr(value)
            raise ParameterError(f"parameter {name!r} of {paper} must be {want}, got {shown}")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if a GPU is visible else ``"cpu"``; other names are checked."""
    from npcrepro.engine.device import resolve_device as _rd

    return str(_rd(device))


def notebook_params(paper: str, namespace: Mapping[str, Any], before: set | None = None) -> Params:
    """Resolve the parameters a notebook received.

    ``namespace`` is the notebook's ``globals()``; ``before`` the set of global names taken before the
    parameters cell (``_before = set(globals())``). Every new global holding a plain value (what
    papermill can inject: str, number, bool, None, list, dict) must be a declared parameter; names
    starting with "_" are ignored. Values of the declared parameters are taken from ``namespace``.
    """
    valid = list(parameters(paper, "cpu" if "cpu" in _paper_sizes(paper) else profiles(paper)[0]))
    if before is None:
        before = set(namespace.get("_before", ()))
    new = [k for k in namespace if k not in before and not k.startswith("_")
           and isinstance(namespace[k], _PLAIN) and not isinstance(namespace[k], (ModuleType, FunctionType, type))]
    unknown = [k for k in new if k not in valid]
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r} (valid: {', '.join(valid)})."
                             + did_you_mean(unknown[0], valid))
    given = {k: namespace[k] for k in valid if k in namespace}
    profile = given.pop("profile", COMMON["profile"])
    return resolve(paper, profile=profile, **given)


# ---------------------------------------------------------------------------------- data
def phantom_cache_dir(P: Mapping, preset: str, n_cases: int, **phantom_params) -> Path:
    """Where a phantom cohort is cached: ``$NPCREPRO_CACHE`` or ``<out_dir>/_cache``, then
    ``phantom-<preset>-n<cases>-s<seed>-<key>``, where ``key`` hashes the cohort's whole record
    (:func:`npcrepro.phantom.cohort_record`: generator version and source fingerprint, and every
    parameter that shapes the output)."""
    from npcrepro import phantom

    record = phantom.cohort_record(n_cases, P["seed"], preset, first_patient(P), **phantom_params)
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:10]
    root = os.environ.get("NPCREPRO_CACHE") or str(Path(P["out_dir"]) / "_cache")
    return Path(root) / f"phantom-{preset}-{cohort_of(P)}-n{n_cases}-s{P['seed']}-{key}"


def cohort_of(P: Mapping) -> str:
    """The phantom cohort ``P`` reads (:data:`COHORTS`; "evaluation" where ``P`` names none)."""
    return str(P.get("cohort") or COMMON["cohort"])


def first_patient(P: Mapping) -> int:
    """The index of the first phantom patient of ``P``'s cohort (:data:`COHORTS`)."""
    cohort = cohort_of(P)
    if cohort not in COHORTS:
        raise ParameterError(f"parameter 'cohort' must be one of {list(COHORTS)}, got {cohort!r}")
    return COHORTS[cohort]


def enough_cases(dataset, P: Mapping):
    """``dataset`` when it holds the ``P.n_cases`` cases a run asked for, else a DataError naming both
    numbers (a run does not quietly train on fewer patients than it was asked for). The profile's own
    ``n_cases`` (the phantom's cohort size) caps a smaller dataset without an error: all its cases."""
    n_cases, have = P.get("n_cases"), len(dataset.cases)
    default = parameters(P["paper"], P["profile"]).get("n_cases") if P.get("paper") and P.get("profile") else None
    if n_cases and int(n_cases) > have and n_cases != default:
        raise DataError(f"{getattr(dataset, 'root', dataset)}: n_cases={int(n_cases)}, but the dataset holds "
                        f"{have} case{'s' if have != 1 else ''} (pass -p n_cases {have} or fewer)")
    return dataset


def load_data(P: Mapping, *, n_cases: int | None = None, preset: str | None = None,
              progress: bool = False, **phantom_params):
    """The dataset a notebook works on.

    ``P.data == "phantom"``: generate the phantom with :func:`npcrepro.phantom.generate` (preset = the
    profile unless ``preset``/``P.phantom_preset``; ``n_cases`` from the argument or ``P.n_cases``),
    or reuse an earlier generation whose recorded :func:`~npcrepro.phantom.cohort_record` equals
    this one's (see :func:`phantom_cache_dir`); a cache whose record differs (other generator code,
    other parameters) is made again. Processes that ask at once (DDP ranks, parallel chapters) make
    it once (:func:`npcrepro.paths.build_once`). Anything else is a dataset folder opened with
    :func:`npcrepro.datasets.open_dataset` (a bad path raises DataError).
    """
    from npcrepro.datasets import open_cached, open_dataset
    from npcrepro.datasets.format import replace_folder

    data = P["data"]
    if data != "phantom":
        return enough_cases(open_dataset(data), {**P, "n_cases": n_cases or P.get("n_cases")})
    from npcrepro import phantom

    if P.get("phantom_shape") and "shape" not in phantom_params:  # a dry run's shorter volumes
        phantom_params["shape"] = list(P["phantom_shape"])
    preset = preset or P.get("phantom_preset") or (
        PHANTOM_PRESETS.get(P["profile"], P["profile"]) if P["profile"] in PROFILES else "cpu")
    n = int(n_cases or P.get("n_cases") or 8)
    first = first_patient(P)
    record = json.loads(json.dumps(phantom.cohort_record(n, P["seed"], preset, first, **phantom_params)))

    def make(folder: Path):
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
        try:
            phantom.generate(tmp, n, P["seed"], preset=preset, progress=progress, first=first, **phantom_params)
            replace_folder(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return open_dataset(folder)

    return build_once(phantom_cache_dir(P, preset, n, **phantom_params),
                      lambda folder: open_cached(folder, record), make)


# ---------------------------------------------------------------------------------- documentation
#: One-line help of the common parameters.
COMMON_HELP = {
    "profile": "smoke (seconds, for tests), cpu (the book, minutes on 2 cores), gpu (paper scale) or "
               "gpu-lite (paper resolution, fewer patients and iterations: a short GPU loan)",
    "data": "'phantom' (generated and cached) or a dataset folder in the project format",
    "device": "auto (cuda if available, else cpu), cpu, cuda or cuda:N",
    "seed": "seeds data generation, splits, initialisation and sampling",
    "cohort": "the phantom's patients: 'evaluation' (npc_1000..., what the book reports; no recipe was "
              "chosen on them) or 'development' (npc_000..., where recipes are tuned)",
    "out_dir": "root of run folders (<out_dir>/<profile>/<chapter>/<stamp>-<name>/)",
    "resume": "a run folder to continue (its parameters must match)",
}


def _type_name(values: Sequence[Any]) -> str:
    """The annotation papermill shows for a parameter whose profile values are ``values``."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return "bool"
    if kinds and kinds <= {int}:
        return "int"
    if kinds and kinds <= {int, float}:
        return "float"
    if kinds and kinds <= {list, tuple}:
        return "list"
    if kinds == {str}:
        return "str"
    if kinds == {dict}:
        return "dict"
    return "object"


def describe(paper: str) -> "list[dict]":
    """Every parameter of ``paper``: name, type, its value at each profile, allowed values and help
    (what ``npcrepro params <chapter>`` prints)."""
    from npcrepro import recipes

    sizes = _paper_sizes(paper)
    try:
        mod = recipes.load(paper)
        helps, types = dict(mod.HELP), dict(getattr(mod, "TYPES", {}))
    except ModuleNotFoundError:
        helps, types = {}, {}
    rows = []
    own = _DEFAULTS.get(paper, {})
    common = {**COMMON, **own}
    for name in parameters(paper, profiles(paper)[0]):
        values = {p: (common[name] if name in COMMON else sizes[p].get(name)) for p in profiles(paper)}
        common_help = None if name in own else COMMON_HELP.get(name)
        rows.append({"parameter": name, "type": types.get(name) or _type_name([COMMON.get(name), *values.values()]),
                     **values, "allowed": list(_CHOICES.get(paper, {}).get(name, ())) or "",
                     "help": common_help or helps.get(name) or recipes.SHARED_HELP.get(name, "")})
    return rows


def parameters_cell(paper: str) -> str:
    """The source of ``paper``'s notebook parameters cell, generated from the registry: the common
    parameters with their defaults, then every chapter parameter as ``None`` ("the profile's
    value"), each with its type and a one-line help that ``papermill --help-notebook`` shows."""
    lines = []
    rows = describe(paper)
    for row in rows:
        name = row["parameter"]
        value = repr(row[profiles(paper)[0]]).replace("'", '"') if name in COMMON else "None"
        vals = [row[p] for p in profiles(paper) if p in row]
        values = ("" if name in COMMON else f" (every profile: {vals[0]!r})" if all(v == vals[0] for v in vals)
                  else " (" + " / ".join(f"{p}: {row[p]!r}" for p in profiles(paper) if p in row) + ")")
        allowed = f"; one of {row['allowed']}" if row["allowed"] else ""
        lines.append(f"{name}: {row['type']} = {value}  # {row['help']}{allowed}{values}")
        if name == "resume" and len(lines) < len(rows):
            lines.append("# per-chapter parameters; None takes the profile's value")
    return "\n".join(lines)
