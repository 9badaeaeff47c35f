"""The book's tables show no pandas index column (npcrepro.viz.tables), and every notebook uses it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from npcrepro.viz import tables

REPO = Path(__file__).resolve().parent.parent


def _header_and_first_row(html: str) -> tuple[list[str], list[str]]:
    head = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", html.split("</thead>")[0], re.S)
    body = html.split("<tbody>")[1].split("</tr>")[0]
    cells = re.findall(r"<t[hd](?:\s[^>]*)?>(.*?)</t[hd]>", body, re.S)
    return [h.strip() for h in head], [c.strip() for c in cells]


def test_positional_index_is_left_out():
    df = pd.DataFrame([{"method": "a", "dsc": 0.5}, {"method": "b", "dsc": 0.7}])
    head, row = _header_and_first_row(tables.table_html(df))
    assert head == ["method", "dsc"] and row == ["a", "0.5"]
    # filtered or sorted: still positions
    head, row = _header_and_first_row(tables.table_html(df.sort_values("dsc", ascending=False)))
    assert head == ["method", "dsc"] and row == ["b", "0.7"]
    # a Styler of such a frame too
    html = tables.table_html(df.style.format(precision=1))
    assert "row_heading" not in html


def test_labelling_index_is_kept():
    df = pd.DataFrame({"dsc": [0.5, 0.7]}, index=pd.Index(["a", "b"], name="method"))
    for html in (tables.table_html(df), tables.table_html(df.style)):
        head, row = _header_and_first_row(html)
        assert "method" in head and row[0] == "a" and float(row[1]) == 0.5
    head, row = _header_and_first_row(tables.table_html(df[["dsc"]].agg(["mean", "std"])))
    assert row[0] == "mean" and float(row[1]) == pytest.approx(0.6)
    assert not tables.positional(pd.MultiIndex.from_tuples([(0, 1)]))
    assert tables.positional(pd.RangeIndex(3)) and tables.positional(pd.Index([3, 1]))


def test_plain_text_without_index():
    df = pd.DataFrame({"a": [1, 2]})

    class Printer:
        def text(self, s):
            self.out = s

    p = Printer()
    tables.table_text(df, p, False)
    assert p.out.split() == ["a", "1", "2"]


def test_install_outside_ipython_does_nothing():
    assert tables.install() is False


def test_install_registers_the_formatters():
    IPython = pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        assert tables.install() is True
        fmt = shell.display_formatter.format(pd.DataFrame({"x": [1, 2]}))[0]
        assert "row_heading" not in fmt["text/html"] and "<th>0</th>" not in fmt["text/html"]
        assert fmt["text/plain"].split() == ["x", "1", "2"]
        # a table whose index labels its rows is still HTML (with that index), not plain text
        labelled = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["a", "b"], name="method"))
        fmt = shell.display_formatter.format(labelled)[0]
        assert "<th>a</th>" in fmt["text/html"] and "method" in fmt["text/html"]
        # floats to three decimals: 0.753, not 0.753182
        fmt = shell.display_formatter.format(pd.DataFrame({"dice": [0.753182, 0.5]}))[0]
        assert "0.753" in fmt["text/html"] and "0.7531" not in fmt["text/html"]
        assert fmt["text/plain"].split() == ["dice", "0.753", "0.500"]
        why = "a reason of a deviation long enough to be cut at pandas' default of fifty characters, whole"
        assert why in shell.display_formatter.format(pd.DataFrame({"why": [why]}))[0]["text/html"]
    finally:
        InteractiveShell.clear_instance()
        pd.reset_option("display.precision")
        pd.reset_option("display.max_colwidth")


@pytest.mark.parametrize("notebook", sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")))
def test_every_notebook_installs_the_table_display(notebook):
    nb = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
            and "parameters" not in c["metadata"].get("tags", [])]  # it displays nothing
    first = next(i for i, s in enumerate(code) if "npcrepro.viz.tables import install" in s)
    # before any cell that can display a table (the parameters cell and the setup cell come first)
    shows = [i for i, s in enumerate(code) if "pd." in s or "display(" in s or "report" in s]
    assert not shows or first <= min(shows), notebook


HOSTILE = '<img src=x onerror=alert(1)>'


@pytest.mark.parametrize("styled", [False, True])
def test_text_from_files_and_parameters_is_shown_as_text(styled):
    """A run folder's name or a `-p data` path in a table (the explorer's run table is a Styler,
    which pandas renders raw) or a message is escaped, never live HTML; numbers keep their format."""
    from npcrepro.viz.tables import as_text, table_html

    df = pd.DataFrame({"run": [HOSTILE, "20261127-cv"], "dice": [0.81234, 0.5]},
                      index=pd.Index([HOSTILE, "b"], name=HOSTILE if styled else None))
    df.columns = ["run", HOSTILE]
    out = table_html(df.style.format(precision=2) if styled else df)
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "0.81" in out and (not styled or "0.81234" not in out)
    assert df["run"].iloc[0] == HOSTILE                      # the caller's table is left as it was
    assert as_text(f"no runs under {HOSTILE}") == "no runs under &lt;img src=x onerror=alert(1)&gt;"
