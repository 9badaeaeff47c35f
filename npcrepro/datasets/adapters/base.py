"""What every adapter returns: the cases found in a source (:class:`SourceCase`) and how to read them
(:class:`Plan`). Adapters import these from here, below the package that registers them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from npcrepro.datasets.case import Case

__all__ = ["SourceCase", "Plan"]


@dataclass(frozen=True)
class SourceCase:
    """One case as found in a source, before reading.

    Attributes
    ----------
    name : str
        Case name in the converted dataset (also the file stem).
    split : str
        ``"Tr"`` (training, ``imagesTr``) or ``"Ts"`` (held-out test, ``imagesTs``).
    path : Path
        The file or folder the case is read from (named in error messages).
    """

    name: str
    split: str
    path: Path


@dataclass
class Plan:
    """What an adapter found in a source: the cases and how to read them.

    ``read(item)`` returns a :class:`Case` or raises :class:`DataError` naming the offending path.
    """

    source: str
    src: Path
    items: list[SourceCase]
    read: Callable[[SourceCase], Case]
    channels: list[str]
    structures: list[str]
    spacing_known: bool = True
    description: str = ""
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
