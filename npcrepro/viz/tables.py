"""How the book's notebooks display tables: no pandas index column where the index means nothing.

A DataFrame built from rows carries pandas' positional index (0, 1, 2, ...), which the default HTML
repr prints as a first, unlabelled column. :func:`install` (called once in every notebook's import
cell) registers IPython display formatters for :class:`pandas.DataFrame` and
:class:`pandas.io.formats.style.Styler` that leave out such an index, so every table a notebook shows,
as the cell's value or through ``display()``, has only its own columns. An index that labels the rows
(named, like ``set_index("item")``, or of strings, like ``agg(["mean", "std"])``) is kept.

Text that came from a file, a folder name or a parameter is shown as text: a DataFrame's HTML is
escaped by pandas, and a Styler's (which pandas leaves raw) is escaped here, cells and labels.
"""
from __future__ import annotations

import html
from typing import Any

import pandas as pd

__all__ = ["positional", "table_html", "table_text", "install", "escaped", "as_text"]


def positional(index: pd.Index) -> bool:
    """Whether ``index`` is a meaningless position: unnamed, one level, integer values (the
    default RangeIndex, or what is left of it after filtering or sorting)."""
    if isinstance(index, pd.MultiIndex) or any(n is not None for n in index.names):
        return False
    return isinstance(index, pd.RangeIndex) or pd.api.types.is_integer_dtype(index.dtype)


def table_html(obj: Any) -> str | None:
    """HTML of a DataFrame or Styler: without its positional index (see :func:`positional`), else
    pandas' own HTML with the index. (A formatter registered for a type replaces the type's
    ``_repr_html_``: returning None would leave the table without HTML, as plain text in the book.)"""
    from pandas.io.formats.style import Styler

    if isinstance(obj, Styler):
        obj = escaped(obj)
        if not positional(obj.data.index):
            return obj._repr_html_()
        return obj.hide(axis="index")._repr_html_()
    if isinstance(obj, pd.DataFrame):
        if not positional(obj.index):
            return obj._repr_html_()
        html = obj.to_html(index=False, notebook=True, max_rows=pd.get_option("display.max_rows"),
                           max_cols=pd.get_option("display.max_columns"),
                           show_dimensions=pd.get_option("display.show_dimensions"))
        return f"<div>{html}</div>"
    return None


def as_text(value: Any) -> str:
    """``value`` as text that Markdown or HTML shows as it is (a file's, folder's or parameter's
    string: ``<``, ``>``, ``&`` and quotes escaped)."""
    return html.escape(str(value))


def escaped(styler):
    """``styler`` with its text cells, index and column labels HTML-escaped (a Styler renders them raw;
    its number formats are kept). The cells are escaped on a copy of its data."""
    def esc(v):
        return html.escape(v) if isinstance(v, str) else v

    data = styler.data.copy()
    for c in data.columns:
        if pd.api.types.is_object_dtype(data[c]) or pd.api.types.is_string_dtype(data[c]):
            data[c] = data[c].map(esc)
    # the labels' names (the header over the index) are rendered from the data's and the Styler's own
    styler.index = data.index = styler.index.set_names([esc(n) for n in styler.index.names])
    styler.columns = data.columns = styler.columns.set_names([esc(n) for n in styler.columns.names])
    styler.data = data
    styler.format_index(escape="html", axis=0)
    return styler.format_index(escape="html", axis=1)


def table_text(obj: Any, p, cycle: bool) -> None:
    """IPython text/plain printer of a DataFrame: ``to_string(index=False)`` for a positional index."""
    if cycle or not positional(obj.index):
        p.text(repr(obj))
    else:
        p.text(obj.to_string(index=False, max_rows=pd.get_option("display.max_rows")))


#: Decimals a table shows of a float (0.753, not 0.753182): a DSC over tens of patients does not
#: resolve the fourth digit. A column that needs another format is formatted as text by its maker.
DECIMALS = 3


def install() -> bool:
    """Register the formatters in the running IPython kernel, round floats to :data:`DECIMALS`
    places in every table and show text cells whole; False outside IPython (nothing done)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the book
        return False
    ip = get_ipython()
    if ip is None:
        return False
    from pandas.io.formats.style import Styler

    pd.set_option("display.precision", DECIMALS)
    pd.set_option("display.max_colwidth", None)  # a page shows a reason or a source whole, never cut with "..."
    formatters = ip.display_formatter.formatters
    formatters["text/html"].for_type(pd.DataFrame, table_html)
    formatters["text/html"].for_type(Styler, table_html)
    formatters["text/plain"].for_type(pd.DataFrame, table_text)
    return True
