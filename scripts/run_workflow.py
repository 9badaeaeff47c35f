"""Run a GitHub workflow job's own steps on this machine, from a fresh clone, up to the Pages upload.

Reads the job from the workflow file (so what runs here is what GitHub runs) and executes it in a
fresh ``git clone`` of the chosen commit:

* ``run:`` steps run with ``bash -e`` and the workflow's and step's ``env`` (``--env`` overrides);
* ``actions/checkout`` is the fresh clone itself; ``actions/setup-python`` and ``actions/setup-node``
  check that the machine's python3 and node have the requested versions;
* ``actions/cache`` restores from a local folder (``--cache-dir``): the exact key, else the newest
  entry whose key starts with a ``restore-keys`` prefix; at the end of the job the paths are saved
  under the key when it was not an exact hit (as the action's post step does);
* ``actions/configure-pages`` needs the GitHub API and is skipped;
* ``actions/upload-pages-artifact`` is done up to the upload: its ``artifact.tar`` is built from the
  path with the action's own ``tar`` options, and the job stops there (nothing leaves the machine).

Expressions: ``${{ env.NAME }}``, ``${{ github.sha }}``, ``${{ github.ref_name }}`` and
``${{ hashFiles(...) }}`` are evaluated; any other one is an error. Usage::

    python scripts/run_workflow.py --ref issue23 --env PROFILE=smoke --env TORCH_SPEC=torch==2.13.0 \\
        --workdir /tmp/wf --cache-dir /tmp/wf-cache
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


class Context:
    def __init__(self, workspace: Path, env: dict, sha: str, ref: str):
        self.workspace, self.env, self.sha, self.ref = workspace, env, sha, ref

    def expand(self, text: str) -> str:
        return _EXPR.sub(lambda m: self._value(m.group(1)), str(text))

    def _value(self, expr: str) -> str:
        if expr.startswith("env."):
            return self.env.get(expr[4:], "")
        if expr == "github.sha":
            return self.sha
        if expr == "github.ref_name":
            return self.ref
        m = re.fullmatch(r"hashFiles\((.*)\)", expr)
        if m:
            patterns = [p.strip().strip("'\"") for p in m.group(1).split(",")]
            h = hashlib.sha256()
            for pat in patterns:
                for f in sorted(glob.glob(str(self.workspace / pat), recursive=True)):
                    if os.path.isfile(f):
                        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
            return h.hexdigest()
        raise SystemExit(f"run_workflow: cannot evaluate ${{{{ {expr} }}}} here")


def _say(msg: str) -> None:
    print(f"[workflow] {msg}", flush=True)


def _lines(value: str) -> list[str]:
    return [ln.strip() for ln in str(value).splitlines() if ln.strip()]


def _cache_restore(step: dict, ctx: Context, cache_dir: Path, saves: list) -> str:
    w = step.get("with", {})
    key = ctx.expand(w["key"])
    paths = _lines(ctx.expand(w["path"]))
    hit = cache_dir / key
    how = "exact hit" if hit.is_dir() else None
    if how is None:
        entries = sorted((p for p in cache_dir.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime,
                         reverse=True)
        for prefix in _lines(ctx.expand(w.get("restore-keys", ""))):
            hit = next((p for p in entries if p.name.startswith(prefix)), None)
            if hit is not None:
                how = f"restored from {hit.name} (prefix {prefix})"
                break
    if how is not None:
        for path in paths:
            src = hit / _slot(path)
            if src.exists():
                dst = _resolve(path, ctx)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    if how != "exact hit":
        saves.append((key, paths))
    return f"cache {key}: {how or 'miss'}"


def _slot(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", path)


def _resolve(path: str, ctx: Context) -> Path:
    return Path(os.path.expanduser(path)) if path.startswith("~") else ctx.workspace / path


def _cache_save(key: str, paths: list[str], ctx: Context, cache_dir: Path) -> None:
    dst = cache_dir / key
    tmp = cache_dir / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    for path in paths:
        src = _resolve(path, ctx)
        if src.is_dir():
            shutil.copytree(src, tmp / _slot(path), symlinks=True)
            n += sum(1 for p in src.rglob("*") if p.is_file())
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    _say(f"post: cache saved as {key} ({n} files)")


def _pages_artifact(step: dict, ctx: Context, out: Path) -> str:
    """What actions/upload-pages-artifact does before uploading: tar the folder (same options)."""
    path = ctx.workspace / ctx.expand(step.get("with", {}).get("path", "_site/"))
    if not (path / "index.html").is_file():
        raise SystemExit(f"run_workflow: {path} has no index.html")
    out.unlink(missing_ok=True)
    subprocess.run(["tar", "--dereference", "--hard-dereference", "--directory", str(path), "-cf",
                    str(out), "--exclude=.git", "--exclude=.github", "."], check=True)
    with tarfile.open(out) as tf:
        names = tf.getnames()
    return f"artifact {out} ({out.stat().st_size / 1e6:.1f} MB, {len(names)} entries); upload skipped"


def _check_version(tool: list[str], want: str) -> str:
    got = subprocess.run(tool, capture_output=True, text=True).stdout.strip() or "missing"
    ok = re.search(rf"\bv?{re.escape(want)}(\.|\b)", got) is not None
    return f"{' '.join(tool)} -> {got} ({'matches' if ok else 'DIFFERS from'} {want})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workflow", default=".github/workflows/book.yml")
    p.add_argument("--job", default="build")
    p.add_argument("--repo", default=".", help="repository to clone (default: this one)")
    p.add_argument("--ref", default="HEAD", help="commit or branch to check out")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="override a workflow env value (repeatable)")
    p.add_argument("--workdir", type=Path, required=True, help="where the fresh clone goes (emptied)")
    p.add_argument("--cache-dir", type=Path, required=True, help="the local stand-in for actions/cache")
    a = p.parse_args(argv)

    repo = Path(a.repo).resolve()
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", a.ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    shutil.rmtree(a.workdir, ignore_errors=True)
    a.workdir.mkdir(parents=True)
    ws = a.workdir / "src"
    t0 = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--no-local", str(repo), str(ws)], check=True)
    subprocess.run(["git", "-C", str(ws), "checkout", "-q", sha], check=True)
    _say(f"fresh clone of {a.ref} ({sha[:10]}) in {ws}")

    flow = yaml.safe_load((ws / a.workflow).read_text(encoding="utf-8"))
    job = flow["jobs"][a.job]
    env = {k: str(v) for k, v in {**(flow.get("env") or {}), **(job.get("env") or {})}.items()}
    env.update(dict(kv.split("=", 1) for kv in a.env))
    ctx = Context(ws, env, sha, a.ref)
    a.cache_dir.mkdir(parents=True, exist_ok=True)
    saves: list = []
    timings = []
    for i, step in enumerate(job["steps"], 1):
        name = step.get("name") or step.get("uses") or step.get("run", "").splitlines()[0]
        t = time.perf_counter()
        uses = str(step.get("uses", ""))
        action = uses.split("@")[0]
        if "run" in step:
            _say(f"step {i}: {name}")
            step_env = {**os.environ, **env, **{k: ctx.expand(v) for k, v in (step.get("env") or {}).items()},
                        "GITHUB_SHA": sha, "GITHUB_WORKSPACE": str(ws), "CI": "true"}
            rc = subprocess.run(["bash", "-e", "-c", ctx.expand(step["run"])], cwd=ws, env=step_env).returncode
            if rc != 0:
                _say(f"step {i} failed (exit {rc})")
                return rc
            note = "ok"
        elif action == "actions/checkout":
            note = "the fresh clone above"
        elif action == "actions/setup-python":
            note = _check_version(["python3", "--version"], str(step.get("with", {}).get("python-version")))
        elif action == "actions/setup-node":
            note = _check_version(["node", "--version"], str(step.get("with", {}).get("node-version")))
        elif action == "actions/cache":
            note = _cache_restore(step, ctx, a.cache_dir, saves)
        elif action == "actions/configure-pages":
            note = "skipped (needs the GitHub Pages API)"
        elif action == "actions/upload-pages-artifact":
            note = _pages_artifact(step, ctx, a.workdir / "artifact.tar")
            timings.append((i, name, time.perf_counter() - t, note))
            _say(f"step {i}: {name}: {note}")
            break
        else:
            raise SystemExit(f"run_workflow: no local stand-in for {uses}")
        timings.append((i, name, time.perf_counter() - t, note))
        if "run" not in step:
            _say(f"step {i}: {name}: {note}")
    for key, paths in saves:
        _cache_save(key, paths, ctx, a.cache_dir)
    _say("summary:")
    for i, name, secs, note in timings:
        print(f"  {i:>2}. {secs:7.1f} s  {name}: {note}", flush=True)
    _say(f"job {a.job} done in {time.perf_counter() - t0:.0f} s, up to the upload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
