"""Rewrite the parameters cell of chapter notebooks from the registry (npcrepro.profiles.parameters_cell).

Usage: python scripts/sync_parameters_cells.py [page ...]   (default: every page; each has a recipe)
The test tests/test_parameters.py fails when a committed cell differs from the generated one.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from npcrepro import profiles, recipes

ROOT = Path(__file__).resolve().parent.parent
#: Every page (each folder holds a recipe.py, from which its cell is generated).
CHAPTERS = recipes.CHAPTERS


def sync(name: str) -> bool:
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    new = profiles.parameters_cell(name)
    if cell.source == new:
        return False
    cell.source = new
    nbformat.write(nb, path)
    return True


if __name__ == "__main__":
    for name in sys.argv[1:] or CHAPTERS:
        print(f"{name}: {'rewritten' if sync(name) else 'up to date'}")
