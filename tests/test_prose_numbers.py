"""Numbers in typed prose come from the run, the recipe or the paper (issue 44, item 5).

The book's rule: every number it shows comes from the run it sits in (myst-nb glue or a computed
output), and a paper's numbers come from the chapter's paper data, labelled "reported". Typed prose
(the recipes' CHOICES, DEVIATIONS and EXCEPTIONS, which the chapters print, and the notebooks'
markdown cells) may therefore hold a decimal number only when it is

* a value of that chapter's parameters at some profile (``npcrepro.recipes.<chapter>``: PROFILES,
  PAPER and the module's other plain constants), or of the phantom grid a profile renders
  (``npcrepro.phantom.PRESETS``);
* a number of that chapter's paper data (``npcrepro.papers.<chapter>``: REPORTED, CITED, CLAIMS and
  the stated recipe and data in INFO), also as a percentage;
* a named constant of :data:`ALLOWED` below, each with where it comes from.

Measured results of development runs belong in the chapter's development record
(``npcrepro/chapters/<chapter>/development.json``, shown by ``npcrepro.viz.development``), not in prose.
Glue roles, inline code, math, links, section numbers ("Sec. 2.3") and licence versions ("CC BY 4.0")
are not prose numbers and are stripped first.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from types import ModuleType

import pytest

from npcrepro import claims, papers, phantom, recipes

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: A decimal number: not part of a word, a version ("0.4.1") or a longer number; a full stop after it
#: ends a sentence ("DSC 0.642.").
NUMBER = re.compile(r"(?<![\w.])(\d*\.\d+)(?!\w|\.\d)")

#: Pages on real data only: the phantom's grid is none of their parameters.
REAL_DATA_PAGES = {"metrics", "realdata"}

#: Text that is not prose: its numbers are not typed results.
_NOT_PROSE = [
    re.compile(r"```.*?```", re.S),                   # code blocks
    re.compile(r"\{[\w:-]+\}`[^`]*`"),                # roles: {glue:text}`name`, {math}`...`
    re.compile(r"`[^`]*`"),                           # inline code
    re.compile(r"\$\$.*?\$\$", re.S),                 # display math
    re.compile(r"\$[^$\n]+\$"),                       # inline math
    re.compile(r"\]\([^)]*\)"),                       # link targets
    re.compile(r"https?://\S+"),                      # bare addresses
    re.compile(r"\bSecs?\.\s*\d+(\.\d+)*"),           # section numbers
    re.compile(r"\bCC BY(-[A-Z]+)* \d+\.\d+"),        # licence versions
]

#: Constants that typed prose may name, with where each comes from: ``(value, source, check)``, where
#: ``check`` returns the value as the code defines it (tested), or None for a value defined outside
#: this package. Global entries apply to every chapter and page, the others to one chapter. Never add a
#: measured result here: it belongs in the chapter's development record.
ALLOWED: dict[str, list[tuple[float, str, object]]] = {
    "*": [
        (0.5, "the probability threshold of every predicted mask (the recipes' `threshold`)",
         lambda: recipes.load("template").PROFILES["cpu"]["threshold"]),
        (0.03, "the convergence tolerance on |mean DSC at half - at full budget| (Results.convergence)",
         lambda: _default("npcrepro.engine.results", "Results.convergence", "tolerance")),
        (0.05, "the significance level of the claims' tests (npcrepro.claims.ALPHA)",
         lambda: claims.ALPHA),
    ],
    "reproducibility": [
        (0.85, "the DSC bar of a network reading MRI as a share of the inter-rater ceiling "
               "(npcrepro.quality.CEILING_SHARE)", lambda: _attr("npcrepro.quality", "CEILING_SHARE")["MRI"]),
        (0.65, "the DSC bar of a network reading CT as a share of the inter-rater ceiling "
               "(npcrepro.quality.CEILING_SHARE)", lambda: _attr("npcrepro.quality", "CEILING_SHARE")["CT"]),
        (0.65, "the DSC bar of a network reading MRI (npcrepro.quality.BARS)",
         lambda: _attr("npcrepro.quality", "BARS")["MRI"]),
        (0.50, "the DSC bar of a network reading CT (npcrepro.quality.BARS)",
         lambda: _attr("npcrepro.quality", "BARS")["CT"]),
    ],
    "leaderboard": [
        (0.01, "the output layer's initial foreground probability of the chapters' networks it builds "
               "(xue2020's `prior`, luo2020's and chen2020's output initialisation)",
         lambda: recipes.load("xue2020").PROFILES["cpu"]["prior"]),
    ],
    "template": [
        (0.1, "the template's intensity jitter (npcrepro.chapters.template.prepare: Augment(jitter=0.1))",
         lambda: _in_source("npcrepro/chapters/template/prepare.py", r"jitter=([\d.]+)")),
    ],
    "li2018": [
        (0.8, "the lower imadjust gamma of the 33 contrast variants (npcrepro.chapters.li2018.prepare.GAMMAS)",
         lambda: min(_attr("npcrepro.chapters.li2018.prepare", "GAMMAS"))),
        (1.25, "the upper imadjust gamma (npcrepro.chapters.li2018.prepare.GAMMAS)",
         lambda: max(_attr("npcrepro.chapters.li2018.prepare", "GAMMAS"))),
        (0.1, "the DSC a faithful fold must reach to count as trained (npcrepro.chapters.li2018.report)",
         lambda: _in_source("npcrepro/chapters/li2018/report.py", r'\["DSC"\] >= ([\d.]+)')),
    ],
    "luo2020": [
        (0.25, "alpha of the focal-loss paper (Lin et al. 2017), the alternative the chapter names", None),
    ],
}


def _attr(module: str, name: str):
    import importlib

    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _default(module: str, name: str, parameter: str):
    import inspect

    return inspect.signature(_attr(module, name)).parameters[parameter].default


def _in_source(path: str, pattern: str) -> float:
    """The number that ``pattern``'s group matches in a source file (a constant written inline)."""
    m = re.search(pattern, (ROOT / path).read_text(encoding="utf-8"))
    assert m, f"{path}: {pattern!r} not found"
    return float(m.group(1))


# ------------------------------------------------------------------------------------------- numbers
def _numbers(obj, out: set[float], texts: list[str] | None = None) -> set[float]:
    """Every number inside ``obj`` (nested dicts, lists, tuples, dataclasses); its strings go to
    ``texts`` when given (the paper data's transcribed text), else they are skipped."""
    if isinstance(obj, str):
        if texts is not None:
            texts.append(obj)
        return out
    if isinstance(obj, bool) or obj is None:
        return out
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out.add(float(obj))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _numbers(getattr(obj, f.name), out, texts)
    elif isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out, texts)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _numbers(v, out, texts)
    return out


_TEXT_FIELDS = {"HELP", "CHOICES", "DEVIATIONS", "EXCEPTIONS", "REFERENCE_CHOICES", "ALLOWED", "TYPES"}


def _recipe_values(mod: ModuleType) -> set[float]:
    """The chapter's parameter values at every profile, its paper values and its other constants."""
    out: set[float] = set()
    for name, value in vars(mod).items():
        if name.isupper() and name not in _TEXT_FIELDS:
            _numbers(value, out)
    return out


def _paper_values(key: str) -> set[float]:
    """Every number of the paper's data, and each as a percentage."""
    mod = papers.get(key)
    out: set[float] = set()
    texts: list[str] = []
    for name in ("REPORTED", "CITED", "CLAIMS", "INFO"):
        _numbers(getattr(mod, name, ()), out, texts)
    out |= {float(x) for text in texts for x in NUMBER.findall(text)}
    return out | {v * 100 for v in out}


def _allowed(chapter: str) -> set[float]:
    out = {v for v, _, _ in ALLOWED["*"] + ALLOWED.get(chapter, [])}
    if chapter not in REAL_DATA_PAGES:
        for preset in phantom.PRESETS.values():
            _numbers(preset.spacing, out)
    if chapter in recipes.CHAPTERS:
        out |= _recipe_values(recipes.load(chapter))
    if chapter in papers.PAPERS:
        out |= _paper_values(chapter)
    return out


def prose(text: str) -> str:
    """``text`` without the parts that are not prose (glue roles, code, math, links, ...)."""
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


def offending(text: str, allowed: set[float]) -> list[str]:
    """The decimal numbers of ``text``'s prose that are none of ``allowed``."""
    return [n for n in NUMBER.findall(prose(text))
            if not any(math.isclose(float(n), v, rel_tol=1e-9, abs_tol=1e-12) for v in allowed)]


def _report(found: list[tuple[str, list[str]]]) -> str:
    n = sum(len(nums) for _, nums in found)
    return (f"{n} typed numbers in prose are neither a parameter of the chapter, a number of its paper "
            f"data nor an allowed constant (move measured results to the development record, glue "
            f"computed ones):\n" + "\n".join(f"  {where}: {', '.join(nums)}" for where, nums in found))


# --------------------------------------------------------------------------------------------- tests
def test_recipe_texts_hold_no_measured_numbers():
    found = []
    for chapter in recipes.CHAPTERS:
        mod = recipes.load(chapter)
        allowed = _allowed(chapter)
        for field in ("CHOICES", "DEVIATIONS", "EXCEPTIONS"):
            for key, text in getattr(mod, field).items():
                bad = offending(text, allowed)
                if bad:
                    found.append((f"npcrepro/recipes/{chapter}.py {field}[{key!r}]", bad))
    assert not found, _report(found)


def test_notebook_markdown_holds_no_measured_numbers():
    found = []
    for path in NOTEBOOKS:
        allowed = _allowed(path.stem)
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] != "markdown":
                continue
            bad = offending("".join(cell["source"]), allowed)
            if bad:
                found.append((f"notebooks/{path.name} markdown cell {i} (id {cell.get('id', '?')})", bad))
    assert not found, _report(found)


@pytest.mark.parametrize("chapter,value,source,check",
                         [(c, v, s, k) for c, entries in ALLOWED.items() for v, s, k in entries],
                         ids=lambda x: "check" if callable(x) else str(x)[:30])
def test_allowed_constants_are_what_the_code_defines(chapter, value, source, check):
    assert chapter == "*" or chapter in recipes.CHAPTERS, f"unknown chapter {chapter!r} in ALLOWED"
    assert source, "every allowed constant says where it comes from"
    if check is not None:
        assert math.isclose(float(check()), value), f"{source}: the code defines {check()}, not {value}"


@pytest.mark.parametrize("text,expected", [
    ("DSC 0.642. Next", ["0.642"]),
    ("PyTorch 0.4.1 and 1e-3", []),
    ("{glue:text}`x_0.5` and `lr=0.25` and $p = 0.7$", []),
    ("(Sec. 2.3; CC BY 4.0) [page](https://x.org/a0.9)", []),
    ("0.74 / 0.79 and -0.003", ["0.74", "0.79", "0.003"]),
])
def test_numbers_are_found_in_prose_only(text, expected):
    assert offending(text, set()) == expected
