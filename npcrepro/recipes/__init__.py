"""Recipes as data: one plain-data module per chapter, with no side effects.

Each chapter's ``recipe.py`` (in its folder, ``npcrepro/chapters/<chapter>/``, read by
:func:`npcrepro.pages.data_module`) holds only plain values (no torch, no chapter code):

``PROFILES``
    ``{"smoke" | "cpu" | "gpu": {parameter: value}}``: the sizes and recipe values each profile runs.
    Every name in any profile is a parameter of the chapter.
``HELP``
    ``{parameter: one line}``: what a parameter means (shown by ``npcrepro params`` and in the
    parameters cell); :data:`SHARED_HELP` covers the parameters many chapters share.
``ALLOWED``
    ``{parameter: [values]}``: parameters restricted to a set of values.
``PAPER``
    ``{parameter: (recipe item, value)}``: the paper's own value of a parameter, named by its item in
    the paper's ``INFO.recipe`` (its ``paper.py``; a test checks the value against that transcription).
``DEVIATIONS``
    ``{parameter: why}``: why a profile departs from the paper's value. Every parameter whose value at
    some profile differs from ``PAPER`` must have an entry (tested); the chapter prints the table.
``CHOICES``
    ``{open point: what this chapter does}``: where the paper is silent.
``EXCEPTIONS`` (optional)
    ``{method: why}``: methods expected to miss the book's quality bars (:mod:`npcrepro.quality`), such
    as a recipe kept as printed to show that it does not train.
``DEFAULTS`` (optional)
    ``{common parameter: value}``: the page's own default of a common parameter
    (:data:`npcrepro.profiles.COMMON`), e.g. ``data="auto"`` for a page that reads the shared real
    extracts; its ``HELP`` line replaces the common one.
``TYPES`` (optional)
    ``{parameter: "int" | "float" | "str" | "list" | ...}`` for a parameter that is None at every
    profile (its type cannot be read off its values).

The texts of CHOICES, DEVIATIONS and EXCEPTIONS give reasons, not measured results: the book shows
only numbers of the run on the page (``tests/test_prose_numbers.py``). The development measurements
behind a reason live in the chapter's development record, ``development.json`` beside its recipe
(:func:`development`): each record names the recipe entry it supports, the commit that wrote it,
the cohort and machine it was measured on, and the measurements as written.

:func:`npcrepro.profiles.parameters` reads these modules; nothing imports a chapter to learn its
parameters.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from npcrepro import pages
from npcrepro.errors import DataError, ParameterError

__all__ = ["CHAPTERS", "SHARED_HELP", "load", "deviations", "development", "development_path"]

#: Fields of one development record: required, and optional ones that default to the file's own.
_RECORD_FIELDS = ("field", "key", "commit", "date", "measurements")
_RECORD_DEFAULTS = ("cohort", "machine")
_RECORD_OPTIONAL = ("setup", "note")
#: What a record's ``field`` names: a text of the recipe module, a parameter (a comment on its value),
#: or a passage of the chapter's notebook.
_ENTRY_FIELDS = ("CHOICES", "DEVIATIONS", "EXCEPTIONS", "PROFILES", "HELP", "notebook")

#: Help of the parameters several chapters share (a chapter's own HELP line wins).
SHARED_HELP = {
    "batch_size": "slices per training batch",
    "infer_batch": "slices per inference batch",
    "n_cases": "patients used (the first n of the dataset)",
    "seeds": "training seeds per method (seed, seed+1, ...)",
    "threads": "torch threads while a job trains and predicts (None: torch's default)",
    "threshold": "probability threshold of the predicted mask",
    "workers": "training jobs at once (processes)",
}

#: Every chapter (and page) with a recipe module (``recipe.py`` in its folder), in the book's order.
CHAPTERS: tuple[str, ...] = tuple(k for k, p in pages.pages().items() if (p.folder / "recipe.py").is_file())

_FIELDS = ("PROFILES", "HELP", "ALLOWED", "PAPER", "DEVIATIONS", "CHOICES", "EXCEPTIONS", "DEFAULTS")


def load(chapter: str) -> ModuleType:
    """The recipe module of ``chapter`` (ParameterError for an unknown chapter), with every field
    present (missing ones default to empty)."""
    if chapter not in CHAPTERS:
        raise ParameterError(f"unknown chapter {chapter!r} (valid: {', '.join(CHAPTERS)})")
    mod = pages.data_module(chapter, "recipe")
    for f in _FIELDS:
        if not hasattr(mod, f):
            setattr(mod, f, {})
    return mod


def deviations(chapter: str, profile: str) -> list[dict]:
    """The parameters whose value at ``profile`` differs from the paper's: one dict per parameter
    (parameter, paper item, paper value, this profile's value, why). ``why`` is None where the
    recipe module gives no reason (the Deviations test fails on those)."""
    mod = load(chapter)
    sizes = mod.PROFILES.get(profile)
    if sizes is None:
        raise ParameterError(f"unknown profile {profile!r} for {chapter}")
    out = []
    for param, (item, value) in mod.PAPER.items():
        mine = sizes.get(param)
        if _same(mine, value):
            continue
        out.append({"parameter": param, "paper item": item, "paper": value, profile: mine,
                    "why": mod.DEVIATIONS.get(param)})
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def development_path(chapter: str) -> Path:
    """Where the development record of ``chapter`` lives: ``development.json`` in its folder (package data)."""
    return pages.get(chapter).folder / "development.json"


def development(chapter: str) -> dict:
    """The development record of ``chapter``: the measurements of development runs behind its recipe's
    reasons, moved out of the recipe's prose (a chapter page shows only numbers of its own run).

    Returns ``{"chapter", "about", "cohort", "machine", "records"}``; each record holds ``field`` and
    ``key`` (the recipe entry it supports, e.g. ``DEVIATIONS`` / ``lr``), ``commit`` and ``date`` (the
    commit that wrote the measurements into the recipe), ``cohort`` and ``machine`` (the file's, unless
    the record names its own), optional ``setup`` and ``note``, and ``measurements`` (the sentences as
    written). A chapter without a file has no records. DataError names the file and what is wrong."""
    mod = load(chapter)
    path = development_path(chapter)
    empty = {"chapter": chapter, "about": "", "cohort": "", "machine": "", "records": []}
    if not path.is_file():
        return empty
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or data.get("chapter") != chapter or not isinstance(data.get("records"), list):
        raise DataError(f"{path}: expected an object with chapter {chapter!r} and a list of records")
    out = {**empty, **{k: data.get(k, "") for k in ("about", "cohort", "machine")}, "records": []}
    for i, rec in enumerate(data["records"]):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where} is not an object")
        missing = [f for f in _RECORD_FIELDS if not rec.get(f)]
        unknown = sorted(set(rec) - set(_RECORD_FIELDS + _RECORD_DEFAULTS + _RECORD_OPTIONAL))
        if missing or unknown:
            raise DataError(f"{where}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")
        if rec["field"] not in _ENTRY_FIELDS:
            raise DataError(f"{where}: field {rec['field']!r} is none of {', '.join(_ENTRY_FIELDS)}")
        if rec["field"] in ("CHOICES", "DEVIATIONS", "EXCEPTIONS", "HELP"):
            if rec["key"] not in getattr(mod, rec["field"], {}):
                raise DataError(f"{where}: {rec['field']}[{rec['key']!r}] is not in npcrepro.recipes.{chapter}")
        elif rec["field"] == "PROFILES" and not any(rec["key"] in p for p in mod.PROFILES.values()):
            raise DataError(f"{where}: {rec['key']!r} is no parameter of npcrepro.recipes.{chapter}")
        if not isinstance(rec["measurements"], list) or not all(isinstance(m, str) for m in rec["measurements"]):
            raise DataError(f"{where}: measurements must be a list of sentences")
        full = {k: rec.get(k, "") for k in _RECORD_FIELDS + _RECORD_OPTIONAL}
        full.update({k: rec.get(k) or out[k] for k in _RECORD_DEFAULTS})
        full["measurements"] = list(rec["measurements"])
        out["records"].append(full)
    return out
