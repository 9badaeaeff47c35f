"""Installing without internet on a GPU server that has its own PyTorch: scripts/wheelhouse.sh lists
every requirement of npcrepro[book] but torch (the wheelhouse it downloads is made elsewhere, so the
download itself is not run here)."""
from __future__ import annotations

import re
import subprocess
import tomllib

from npcrepro.paths import repo_root


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_the_wheelhouse_holds_every_requirement_of_the_book_install_but_torch():
    root = repo_root()
    out = subprocess.run(["bash", str(root / "scripts" / "wheelhouse.sh"), "--list"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = (meta["project"]["dependencies"] + meta["project"]["optional-dependencies"]["book"]
              + meta["build-system"]["requires"])
    assert "torch" not in {_name(r) for r in out}
    assert {_name(r) for r in out} == {_name(r) for r in wanted} - {"torch"}
    assert len(out) == len({_name(r) for r in out})  # each once, with the pyproject's own bounds
    for r in out:
        assert r in wanted


def test_the_wheelhouse_script_says_how_to_call_it():
    done = subprocess.run(["bash", str(repo_root() / "scripts" / "wheelhouse.sh")], capture_output=True, text=True)
    assert done.returncode != 0 and "usage: bash scripts/wheelhouse.sh OUT" in done.stderr
