"""Put the Binder/Colab setup cell first in every source notebook (idempotent).

Launch buttons open ``notebooks/<name>.ipynb`` on Binder or Colab (see book/_ext/launch_sources.py).
Colab has no npcrepro, so each notebook starts with a cell that installs it when the kernel lacks it:
from the checkout around the notebook when there is one, else from a shallow clone of
:data:`REPOSITORY`. Where npcrepro is importable (the project's .venv, Binder's environment.yml, the
book's own runs) the cell does nothing. It is tagged ``remove-cell``, so the book does not show it.

Usage: ``python scripts/setup_cell.py`` (rewrites notebooks whose cell is missing or differs);
``--check`` exits 1 when a notebook would change.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

#: The repository Colab clones; the same as ``repository.url`` in _config.yml (a test checks).
REPOSITORY = "https://github.com/npcrepro/npcrepro"
CELL_ID = "npcrepro-setup"
SOURCE = f'''\
# Setup for Binder and Colab (hidden in the book): install npcrepro when this kernel lacks it.
# Does nothing where npcrepro is installed (the project's .venv, Binder, the book's own runs).
def _npcrepro_setup(repository="{REPOSITORY}"):
    import importlib.util, os, subprocess, sys
    if importlib.util.find_spec("npcrepro") is not None:
        return
    src = ".." if os.path.isfile("../pyproject.toml") else "npcrepro-src"
    if src != ".." and not os.path.isdir(src):
        subprocess.run(["git", "clone", "--depth", "1", repository, src], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", src + "[book]"], check=True)
    os.chdir(src)  # chapters read and write paths relative to the repository root
    sys.path.insert(0, os.getcwd())


_npcrepro_setup()
del _npcrepro_setup'''


def cell() -> dict:
    lines = SOURCE.split("\n")
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID,
            "metadata": {"tags": ["remove-cell"]}, "outputs": [],
            "source": [line + "\n" for line in lines[:-1]] + [lines[-1]]}


def apply(path: Path) -> bool:
    """Insert or refresh the setup cell of notebook ``path``; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cells = [c for c in nb["cells"] if c.get("id") != CELL_ID]
    nb["cells"] = [cell()] + cells
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    check = "--check" in argv
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        if check:
            text = path.read_text(encoding="utf-8")
            nb = json.loads(text)
            if not nb["cells"] or nb["cells"][0] != cell():
                changed.append(path.name)
        elif apply(path):
            changed.append(path.name)
    verb = "would change" if check else "updated"
    print(f"setup cell: {verb} {len(changed)} notebook(s)" + (f": {', '.join(changed)}" if changed else ""))
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
