"""The book's pages, discovered: one folder ``npcrepro/chapters/<key>/`` per page, each with a ``page.toml``.

Every list of pages (the book's, the CLI's, the plan's, the summary's, the papers', the recipes', the table of
contents) is derived here from one scan of those files, the way nnU-Net finds its trainers: adding a page is
adding its folder. A ``page.toml`` is data only (read here, never imported), so every layer may ask::

    title = "li2018: CNN on contrast-enhanced MRI"
    order = 40                       # place in the book (execution order and table of contents)
    part = "The five papers"         # the table of contents' part (one of PARTS)
    kind = "paper"                   # paper | chapter | page | reader (see KINDS)
    minutes = 3                      # cpu-profile minutes on 2 cores (a full book's page time): long pages start first
    depends = []                     # pages whose outputs it reads ("kind:paper": every paper), or "*": all
    text = "li2018_cnn_cemri.txt"    # a paper's full text in ../shared/papers (papers only)
    wide = false                     # trains on a process pool of its own: runs alone and first

Beside it, the folder holds the page's data, each a plain module that only lower layers' types may import:
``recipe.py`` (its parameters per profile, from which its notebook's parameters cell is generated; the
paper's stated values, its choices: :mod:`npcrepro.recipes`),
``paper.py`` for a paper (its reported numbers and claims as transcribed: :mod:`npcrepro.papers`) and
``development.json`` (the measurements behind its recipe's choices). The registry reads them from the folder
(:func:`data_module`), as it reads ``page.toml``, without importing the chapter's code. A page trains networks
when its folder holds ``methods.py`` (a :class:`~npcrepro.engine.experiment.Chapter`).
"""
from __future__ import annotations

import importlib.util
import sys
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from npcrepro.errors import DataError, ParameterError

__all__ = ["Page", "KINDS", "PARTS", "pages", "keys", "papers", "training", "get",
           "data_module"]

#: What a page is: a paper's reproduction, another chapter that trains (the template, the leaderboard), a page
#: that computes without training, or a page that only reads other pages' outputs.
KINDS = ("paper", "chapter", "page", "reader")
#: The table of contents' parts, in order (a reader page is the book's root or an appendix).
PARTS = ("Foundations", "The five papers", "Across the papers", "Appendix", "root")

_ROOT = Path(__file__).resolve().parent / "chapters"
_FIELDS = {"title": str, "order": int, "part": str, "kind": str, "minutes": (int, float), "depends": (list, str),
           "text": str, "wide": bool}
_REQUIRED = ("title", "order", "part", "kind")


@dataclass(frozen=True)
class Page:
    """One book page: its key (the folder's and the notebook's name) and its ``page.toml``."""
    key: str
    title: str
    order: int
    part: str
    kind: str
    minutes: float = 1.0
    depends: tuple[str, ...] | str = ()
    text: str = ""
    wide: bool = False
    folder: Path = _ROOT

    @property
    def trains(self) -> bool:
        """Whether the page trains networks (its folder holds the chapter's ``methods.py``)."""
        return (self.folder / "methods.py").is_file()

    @property
    def module(self) -> str:
        """The module holding the page's ``CHAPTER`` (for a page that trains)."""
        return f"npcrepro.chapters.{self.key}.methods"


def _read(path: Path) -> Page:
    key = path.parent.name
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path}: not a readable page.toml ({exc})") from None
    missing = [f for f in _REQUIRED if f not in spec]
    unknown = sorted(set(spec) - set(_FIELDS))
    wrong = [f for f, v in spec.items() if f in _FIELDS
             and (not isinstance(v, _FIELDS[f]) or (isinstance(v, bool) and _FIELDS[f] is not bool))]
    if missing or unknown or wrong:
        raise DataError(f"{path}: " + "; ".join(filter(None, [
            missing and f"missing {', '.join(missing)}", unknown and f"unknown fields {', '.join(unknown)}",
            wrong and f"wrong type for {', '.join(wrong)}"])))
    if spec["kind"] not in KINDS:
        raise DataError(f"{path}: kind {spec['kind']!r} is not one of {', '.join(KINDS)}")
    if spec["part"] not in PARTS:
        raise DataError(f"{path}: part {spec['part']!r} is not one of {', '.join(PARTS)}")
    depends = spec.get("depends", ())
    if (isinstance(depends, str) and depends != "*") or (isinstance(depends, list)
                                                         and not all(isinstance(d, str) for d in depends)):
        raise DataError(f"{path}: depends is a list of pages or \"*\", not {depends!r}")
    if spec["kind"] == "paper" and not spec.get("text"):
        raise DataError(f"{path}: a paper page names its full text (text = \"<file>.txt\")")
    return Page(key=key, title=spec["title"], order=spec["order"], part=spec["part"], kind=spec["kind"],
                minutes=float(spec.get("minutes", 1.0)),
                depends=depends if isinstance(depends, str) else tuple(depends), text=spec.get("text", ""),
                wide=bool(spec.get("wide", False)), folder=path.parent)


def _resolve(page: Page, found: list[Page]) -> Page:
    """``page`` with ``kind:<kind>`` entries of its ``depends`` replaced by the keys of that kind."""
    if page.depends == "*":
        return page
    known = {p.key for p in found}
    out: list[str] = []
    for d in page.depends:
        kind = d.removeprefix("kind:") if d.startswith("kind:") else None
        if (kind is not None and kind not in KINDS) or (kind is None and d not in known):
            raise DataError(f"{page.folder / 'page.toml'}: depends on {d!r}, which is neither a page nor "
                            f"kind:<{'|'.join(KINDS)}>")
        named = [p.key for p in found if p.kind == kind and p.key != page.key] if kind is not None else [d]
        out += [k for k in named if k not in out]
    return replace(page, depends=tuple(out))


@lru_cache(maxsize=4)
def _scan(root: Path) -> tuple[Page, ...]:
    found = sorted((_read(p) for p in root.glob("*/page.toml")), key=lambda p: (p.order, p.key))
    return tuple(_resolve(p, found) for p in found)


def pages(root: Path | None = None) -> dict[str, Page]:
    """Every page in book order (``order``, then key): key -> :class:`Page`."""
    return {p.key: p for p in _scan(Path(root) if root else _ROOT)}


def get(key: str) -> Page:
    """The page ``key``; ``ParameterError`` naming the valid keys for an unknown one."""
    found = pages()
    if key not in found:
        raise ParameterError(f"unknown page {key!r} (valid: {', '.join(found)})")
    return found[key]


def keys(*kinds: str) -> tuple[str, ...]:
    """Keys of the pages of ``kinds`` (every page when none is given), in book order."""
    return tuple(k for k, p in pages().items() if not kinds or p.kind in kinds)


def papers() -> tuple[str, ...]:
    """The papers' keys, in book order."""
    return keys("paper")


def training() -> tuple[str, ...]:
    """Keys of the pages that train networks, in book order."""
    return tuple(k for k, p in pages().items() if p.trains)


def data_module(key: str, name: str) -> ModuleType:
    """The plain-data module ``name`` (``recipe`` or ``paper``) of page ``key``, loaded from its folder as
    ``npcrepro.chapters.<key>.<name>`` (the same module object a normal import of that name gives).
    ``ParameterError`` for an unknown page or one without that module."""
    full = f"npcrepro.chapters.{key}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    path = get(key).folder / f"{name}.py"
    if not path.is_file():
        raise ParameterError(f"page {key!r} has no {name} ({path.name} in {path.parent})")
    spec = importlib.util.spec_from_file_location(full, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[full] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[full]
        raise
    return mod
