"""The whole book builds offline from executed smoke chapters, and every page in the TOC exists."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from npcrepro import book
from npcrepro.errors import DataError


def _toc_files(root):
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.mark.slow
def test_book_builds_with_every_page(book_copy, run_notebook):
    for name in book.execution_order(book.CHAPTERS):
        nb = run_notebook(name)  # cached if a chapter test already ran it
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and all("hide-cell" in c.metadata.tags for c in injected), name
    index = book.build_html("smoke", root=book_copy, log=lambda *_: None)
    assert index.exists()
    html = book_copy / "_build" / "html"
    for f in _toc_files(book_copy):
        page = html / (f.replace("book/runs/cpu/", "book/runs/smoke/") + ".html")
        assert page.exists(), f"missing page {page}"
    # Chapters that draw figures carry them as images in the HTML.
    for name in ("data", "leaderboard", "explorer", "reproducibility"):
        text = (html / "book" / "runs" / "smoke" / f"{name}.html").read_text(encoding="utf-8")
        assert len(re.findall(r"<img [^>]*src=", text)) >= 1, f"{name}: no figures in HTML"
    # The explorer's saved widget state is embedded, with the vendored (local) widget manager.
    text = (html / "book" / "runs" / "smoke" / "explorer.html").read_text(encoding="utf-8")
    assert "application/vnd.jupyter.widget-state+json" in text
    assert "vendor/widgets/embed-amd.js" in text and "cdn.jsdelivr" not in text
    # ... and the static viewer, whose NIfTI export the build copied next to the page
    assert 'class="npc-viewer"' in text and "_static/npcviewer/viewer.js" in text
    manifests = list((html / "book" / "runs" / "smoke" / "_viewer").glob("*/manifest.json"))
    assert len(manifests) == 1, manifests
    runs = [r["label"].split("/")[0] for r in json.loads(manifests[0].read_text(encoding="utf-8"))["runs"]]
    assert runs[0] == "leaderboard" and {"li2018", "xue2020", "guo2021", "chen2020"} <= set(runs), runs
    # Launch buttons open the source notebook (the executed copies are not in the repository).
    li = (html / "book" / "runs" / "smoke" / "li2018.html").read_text(encoding="utf-8")
    url = yaml.safe_load((book_copy / "_config.yml").read_text(encoding="utf-8"))["repository"]["url"]
    colab = "https://colab.research.google.com/github/" + url.split("github.com/")[1] + "/blob/main/"
    assert colab + "notebooks/li2018.ipynb" in li and colab + "book/runs/" not in li
    assert "mybinder.org/v2/gh/" in li and "npcrepro-setup" not in li  # the setup cell is hidden
    # The intro's table has one row per paper with the reported number.
    intro = (html / "book" / "runs" / "smoke" / "intro.html").read_text(encoding="utf-8")
    for paper in ("li2018", "xue2020", "luo2020", "guo2021", "chen2020"):
        assert paper in intro
    assert "0.760" in intro  # xue2020's reported DSC, from npcrepro.papers


@pytest.mark.slow
def test_built_book_draws_widgets_and_figures_offline_in_chromium(book_copy, run_notebook, tmp_path):
    """The browser check: headless Chromium with every host name unresolvable opens the built
    explorer, leaderboard and metrics pages; the widget manager must draw the explorer's widgets,
    every figure must load and MathJax must typeset the formulas. Skipped (with the reason) when Chromium is not installed."""
    from npcrepro.browsercheck import check_page, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); browser check not run")
    html = book_copy / "_build" / "html" / "book" / "runs" / "smoke"
    if not (html / "explorer.html").exists():
        test_book_builds_with_every_page(book_copy, run_notebook)
    report = check_page(html / "explorer.html", tmp_path / "explorer.png", expect_widgets=5,
                        expect_figures=2)
    assert report["ok"], report["reasons"]
    assert not report["external_requests"] and not report["missing_local"]
    report = check_page(html / "leaderboard.html", tmp_path / "leaderboard.png", expect_widgets=0,
                        expect_figures=2)
    assert report["ok"], report["reasons"]
    # the static viewer, driven as a reader would: slice, prediction, plane and channel change the
    # picture, and nothing is fetched off the machine
    pytest.importorskip("playwright", reason="playwright is not installed; the viewer is not driven")
    from npcrepro.viewercheck import drive_viewer

    report = drive_viewer(html / "explorer.html", out_dir=tmp_path / "viewer")
    assert report["ok"], report["reasons"]
    assert set(report["steps"]) >= {"slice", "prediction off", "prediction on", "plane", "channel"}
    assert report["blocked"] == [] and report["missing"] == []
    # the metrics page's formulas, typeset by the vendored MathJax
    report = check_page(html.parents[2] / "book" / "metrics.html", tmp_path / "metrics.png",
                        expect_widgets=0, expect_figures=0, expect_math=10)
    assert report["ok"], report["reasons"]


def test_toc_points_at_the_cpu_runs_and_existing_pages():
    from npcrepro.paths import repo_root

    root = repo_root()
    for f in _toc_files(root):
        if f.startswith("book/runs/cpu/"):
            name = f.rsplit("/", 1)[1]
            assert name in book.CHAPTERS and (root / "notebooks" / f"{name}.ipynb").exists()
        else:
            assert (root / f"{f}.md").exists(), f


def test_gpu_book_renders_committed_runs_and_executes_only_missing_ones(tmp_path, monkeypatch):
    """`npcrepro book --profile gpu` on a GPU machine: chapters with a committed executed notebook in
    book/runs/gpu/ are rendered as they are (never re-run, even when stale); only missing ones run,
    and the HTML is built from a table of contents that points at book/runs/gpu/."""
    import shutil

    from npcrepro.paths import repo_root

    root = tmp_path / "repo"
    (root / "book" / "runs" / "gpu").mkdir(parents=True)
    shutil.copy2(repo_root() / "_toc.yml", root / "_toc.yml")
    committed = [n for n in book.CHAPTERS if n not in ("leaderboard", "intro")]
    for name in committed:
        (root / "book" / "runs" / "gpu" / f"{name}.ipynb").write_text("{}", encoding="utf-8")
    calls = {}
    monkeypatch.setattr(book, "has_gpu", lambda: True)
    monkeypatch.setattr(book, "execute_all", lambda profile, names, **kw: calls.update(
        profile=profile, names=list(names), force=kw.get("force")))
    monkeypatch.setattr(book, "build_html", lambda profile, **kw: calls.update(
        html=profile, toc=book.toc_for(profile, kw["root"])) or kw["root"] / "index.html")
    book.book("gpu", root=root, log=lambda *_: None)
    # the missing chapters, and the readers again (each is skipped when its fingerprint matches)
    assert calls["profile"] == "gpu" and calls["names"] == ["leaderboard", "reproducibility", "intro"]
    toc = calls["toc"].read_text(encoding="utf-8")
    assert calls["html"] == "gpu" and "book/runs/gpu/li2018" in toc and "book/runs/cpu/" not in toc
    # the cpu book, by contrast, considers every chapter (each is skipped when its fingerprint matches)
    book.book("cpu", root=root, log=lambda *_: None)
    assert calls["names"] == list(book.CHAPTERS) and calls["toc"] == root / "_toc.yml"


def test_gpu_lite_book_without_a_gpu_renders_what_is_committed(tmp_path, monkeypatch):
    """On a machine without a GPU, `npcrepro book --profile gpu-lite` trains nothing: it executes the
    pages that read the others, builds from a table of contents of the chapters that exist, and says
    which are left out."""
    from npcrepro.paths import repo_root

    root = tmp_path / "repo"
    pages = root / "book" / "runs" / "gpu-lite"
    pages.mkdir(parents=True)
    shutil.copy2(repo_root() / "_toc.yml", root / "_toc.yml")
    for name in ("template", "intro", "reproducibility"):
        (pages / f"{name}.ipynb").write_text("{}", encoding="utf-8")
    calls, lines = {}, []
    monkeypatch.setattr(book, "has_gpu", lambda: False)
    monkeypatch.setattr(book, "execute_all", lambda profile, names, **kw: calls.update(names=list(names)))
    monkeypatch.setattr(book, "check_book_notebook", lambda path, profile: None)
    monkeypatch.setattr("npcrepro.webassets.ensure_web_assets", lambda *a, **k: None)
    monkeypatch.setattr(book.subprocess, "run", lambda cmd, **kw: calls.update(toc=cmd[cmd.index("--toc") + 1])
                        or type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})())
    monkeypatch.setattr("npcrepro.viz.static_viewer.publish", lambda *a, **k: (None, []))
    book.book("gpu-lite", root=root, log=lines.append)
    assert calls["names"] == ["reproducibility", "intro"]
    assert any("no GPU here" in ln and "li2018" in ln for ln in lines)
    assert any("left out of this book" in ln and "leaderboard" in ln for ln in lines)
    toc = yaml.safe_load(Path(calls["toc"]).read_text(encoding="utf-8"))
    files = [c["file"] for p in toc["parts"] for c in p["chapters"]]
    assert toc["root"] == "book/runs/gpu-lite/intro"
    assert "book/runs/gpu-lite/template" in files and "book/runs/gpu-lite/li2018" not in files
    assert "book/protocol" in files and all(p["chapters"] for p in toc["parts"])
    # the intro is the book's root page: without it there is no book
    (pages / "intro.ipynb").unlink()
    with pytest.raises(DataError, match="no executed notebooks for intro"):
        book.build_html("gpu-lite", root=root, log=lines.append)


def test_committed_gpu_lite_chapters_are_part_of_the_readers_fingerprint(tmp_path):
    from npcrepro.paths import repo_root

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy2(repo_root() / "notebooks" / "template.ipynb", root / "notebooks" / "template.ipynb")
    (root / "npcrepro").mkdir()
    before = book.fingerprint("template", "cpu", {}, root)
    assert book.fingerprint("template", "gpu-lite", {}, root) != before
    (root / "book" / "runs" / "gpu-lite").mkdir(parents=True)
    (root / "book" / "runs" / "gpu-lite" / "li2018.ipynb").write_text(
        '{"metadata": {"npcrepro": {"fingerprint": "abc"}}}', encoding="utf-8")
    assert book.fingerprint("template", "cpu", {}, root) == before  # another chapter's gpu-lite run
    (root / "book" / "runs" / "gpu-lite" / "template.ipynb").write_text(
        '{"metadata": {"npcrepro": {"fingerprint": "abc"}}}', encoding="utf-8")
    assert book.fingerprint("template", "cpu", {}, root) != before


def test_wide_chapters_run_alone_and_readers_after_what_they_read(tmp_path, monkeypatch):
    """execute_all with two jobs: the leaderboard (which trains on its own process pool) never
    overlaps another chapter, at most two run at once, and every reader starts after its inputs."""
    import threading
    import time as _time

    running, spans, lock = set(), {}, threading.Lock()
    overlaps = []

    def fake_execute(name, profile, params, **kw):
        with lock:
            overlaps.append((name, frozenset(running)))
            running.add(name)
            start = _time.perf_counter()
        _time.sleep(0.02)
        with lock:
            running.discard(name)
            spans[name] = (start, _time.perf_counter())
        return book.ChapterResult(name, profile, tmp_path / f"{name}.ipynb", 0.02, False)

    monkeypatch.setattr(book, "execute", fake_execute)
    results = book.execute_all("cpu", root=tmp_path, log=lambda *_: None, jobs=2)
    assert [r.name for r in results] == book.execution_order(book.CHAPTERS)
    for name, others in overlaps:
        assert len(others) <= 1, (name, others)
        if name in book.WIDE:
            assert not others, f"{name} started beside {set(others)}"
        assert not (others & book.WIDE), f"{name} started beside a wide chapter"
    for reader in book.DEPENDS:
        for dep in book.dependencies(reader):
            assert spans[dep][1] <= spans[reader][0], (dep, reader)


def test_next_chapter_waits_for_an_idle_machine_before_a_wide_one():
    ready = lambda name: True  # noqa: E731
    assert book.next_chapter(["leaderboard", "li2018"], [], ready) == "leaderboard"
    assert book.next_chapter(["leaderboard", "li2018"], ["guo2021"], ready) is None
    assert book.next_chapter(["li2018"], ["leaderboard"], ready) is None
    assert book.next_chapter(["li2018", "data"], ["guo2021"], ready) == "li2018"
    assert book.next_chapter(["explorer", "data"], [], lambda n: n != "explorer") == "data"


def test_failed_chapter_keeps_its_kernel_log_beside_the_partial_notebook(tmp_path):
    failed = tmp_path / "li2018.failed.ipynb"
    log = tmp_path / ".li2018.123-abc.running.kernel.log"
    log.write_text("Fatal Python error: Segmentation fault\n")
    assert book._kept(log, failed) == f"; kernel output: {tmp_path / 'li2018.failed.kernel.log'}"
    assert not log.exists() and "Segmentation" in (tmp_path / "li2018.failed.kernel.log").read_text()
    log.write_text("")
    assert book._kept(log, failed) == "" and not log.exists()
    assert book._kept(log, failed) == ""  # no log at all


def test_the_books_kernels_draw_no_progress_bars_and_leave_this_process_alone(tmp_path):
    """A chapter's kernel gets NPCREPRO_PROGRESS_BARS=0 (no tqdm widget left dead on the page); the
    process that runs the book, where chapters run side by side in threads, keeps its environment."""
    import os

    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os; print('bars', os.environ.get('NPCREPRO_PROGRESS_BARS'))")]
    nbformat.write(nb, tmp_path / "env.ipynb")
    before = os.environ.get("NPCREPRO_PROGRESS_BARS")
    pm.execute_notebook(str(tmp_path / "env.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=book.KERNEL,
                        progress_bar=False, kernel_manager_class=book.kernel_manager_class(tmp_path / "k.log"))
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"].strip() == "bars 0"
    assert os.environ.get("NPCREPRO_PROGRESS_BARS") == before
