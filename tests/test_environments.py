"""One source of truth for dependencies: environment.yml (conda) holds every requirement of pyproject.toml's
dependencies and its book, dev and interop extras, with the same lower bounds, and nothing the package does
not ask for (tests/test_install.py checks the offline wheelhouse the same way)."""
from __future__ import annotations

import re
import tomllib

import yaml

from npcrepro.paths import repo_root

#: Lines of environment.yml that are not package requirements of pyproject.toml.
_TOOLS = {"python", "pip", "nodejs", "-e"}


def _split(requirement: str) -> tuple[str, str]:
    """(normalised name, version bounds) of a pip or conda requirement."""
    r = requirement.split("#")[0].strip()
    name = re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]
    return name.lower().replace("_", "-"), r[len(name):].split("]")[-1].replace(" ", "")


def _pyproject() -> dict[str, str]:
    meta = tomllib.loads((repo_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = meta["optional-dependencies"]
    reqs = meta["dependencies"] + extras["book"] + extras["dev"] + extras["interop"]
    return dict(_split(r) for r in reqs if not r.startswith("npcrepro"))


def _environment() -> dict[str, str]:
    env = yaml.safe_load((repo_root() / "environment.yml").read_text(encoding="utf-8"))
    out = {}
    for item in env["dependencies"]:
        for r in (item["pip"] if isinstance(item, dict) else [item]):
            name, bounds = _split(r)
            if name not in _TOOLS and not name.startswith("--"):
                out[name] = bounds
    return out


def test_environment_yml_holds_every_requirement_of_pyproject_with_its_bounds():
    want, have = _pyproject(), _environment()
    assert sorted(set(want) - set(have)) == [], "in pyproject.toml, missing from environment.yml"
    assert sorted(set(have) - set(want)) == [], "in environment.yml, not asked for by pyproject.toml"
    for name, bounds in want.items():
        if name == "torch":  # environment.yml pins the build the book was made with
            assert have[name] == "==2.13.0"
        else:
            assert have[name] == bounds, name


def test_binder_installs_a_cpu_torch_first_and_the_package_once_the_repository_is_there():
    binder = repo_root() / "binder"
    reqs = [ln.strip() for ln in (binder / "requirements.txt").read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert reqs == ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]
    assert not any("-e" in r.split() for r in reqs)  # the package is not installed before the repository
    post = (binder / "postBuild").read_text(encoding="utf-8")
    assert (binder / "postBuild").stat().st_mode & 0o111  # executable, as repo2docker runs it
    assert 'pip install --no-cache-dir -c /tmp/torch-constraint.txt -e ".[book]"' in post
    assert "torch==2.13.0+cpu" in post
    py = tomllib.loads((repo_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    runtime = (binder / "runtime.txt").read_text(encoding="utf-8").strip()
    assert runtime.startswith("python-") and py == ">=3.11" and runtime >= "python-3.11"


def test_the_lock_pins_a_version_every_requirement_accepts():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = {}
    for line in (repo_root() / "requirements" / "lock.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    assert "torch" not in lock and "npcrepro" not in lock  # torch is the bootstrap's own pin
    meta = tomllib.loads((repo_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = meta["optional-dependencies"]
    for text in meta["dependencies"] + extras["book"] + extras["dev"] + extras["interop"]:
        req = Requirement(text)
        if req.name in ("torch", "npcrepro"):
            continue
        pinned = lock.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not in requirements/lock.txt (run scripts/lock.sh)"
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}: {req.specifier} rejects {pinned}"
