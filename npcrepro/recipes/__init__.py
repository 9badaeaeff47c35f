"""Recipes as data: one plain-data module per chapter, imported by name, with no side effects.

Each ``npcrepro.recipes.<chapter>`` module holds only plain values (no torch, no chapter imports):

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
    ``npcrepro.papers.<paper>.INFO.recipe`` (a test checks the value against that transcription).
``DEVIATIONS``
    ``{parameter: why}``: why a profile departs from the paper's value. Every parameter whose value at
    some profile differs from ``PAPER`` must have an entry (tested); the chapter prints the table.
``CHOICES``
    ``{open point: what this chapter does}``: where the paper is silent.
``EXCEPTIONS`` (optional)
    ``{method: why}``: methods expected to miss the book's quality bars (:mod:`npcrepro.quality`), such
    as a recipe kept as printed to show that it does not train.
``TYPES`` (optional)
    ``{parameter: "int" | "float" | "str" | "list" | ...}`` for a parameter that is None at every
    profile (its type cannot be read off its values).

:func:`npcrepro.profiles.parameters` reads these modules; nothing imports a chapter to learn its
parameters.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from npcrepro.errors import ParameterError

__all__ = ["CHAPTERS", "SHARED_HELP", "load", "deviations"]

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

#: Every chapter (and page) with a recipe module, in the book's order.
CHAPTERS: tuple[str, ...] = ("metrics", "realdata", "template", "li2018", "xue2020", "luo2020",
                             "guo2021", "chen2020", "leaderboard", "explorer", "intro",
                             "reproducibility")

_FIELDS = ("PROFILES", "HELP", "ALLOWED", "PAPER", "DEVIATIONS", "CHOICES", "EXCEPTIONS")


def load(chapter: str) -> ModuleType:
    """The recipe module of ``chapter`` (ParameterError for an unknown chapter), with every field
    present (missing ones default to empty)."""
    if chapter not in CHAPTERS:
        raise ParameterError(f"unknown chapter {chapter!r} (valid: {', '.join(CHAPTERS)})")
    mod = importlib.import_module(f"npcrepro.recipes.{chapter}")
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
