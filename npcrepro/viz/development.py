"""A chapter's development record as a table, the same for every chapter.

The recipes' texts give the reasons for each choice; the measurements behind those reasons come from
development runs and are kept apart, in the chapter's development record
(:func:`npcrepro/chapters/development/recipe.py`). A chapter page shows only numbers of its own run, so it shows
the record as what it is: :func:`table` gives it a caption saying that its numbers come from
development runs (cohort, machine, commit), not from the run on the page. Every chapter notebook shows
it with ``development.table("<chapter>")`` after its recipe's choices.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd

from npcrepro import recipes

__all__ = ["DevelopmentTable", "table", "COLUMNS"]

#: Columns of the table: the recipe entry, when and how it was measured, the measurements as written.
COLUMNS = ("recipe entry", "measured", "development measurements")

_ENTRY = {"CHOICES": "choice", "DEVIATIONS": "deviation", "EXCEPTIONS": "exception",
          "PROFILES": "parameter", "HELP": "parameter", "notebook": "page"}


@dataclass
class DevelopmentTable:
    """A chapter's development record: ``frame`` (one row per record, :data:`COLUMNS`) and
    ``caption`` (what the numbers are and where they come from)."""

    chapter: str
    frame: pd.DataFrame
    caption: str

    def _repr_html_(self) -> str:
        body = "" if self.frame.empty else self.frame.to_html(index=False, escape=True)
        return f"<div><p style='font-style:italic'>{html.escape(self.caption)}</p>{body}</div>"

    def __str__(self) -> str:
        if self.frame.empty:
            return self.caption
        return f"{self.caption}\n{self.frame.to_string(index=False)}"

    __repr__ = __str__


def _measured(rec: dict, record: dict) -> str:
    parts = [f"{rec['date']}, commit {rec['commit']}"]
    if rec["setup"]:
        parts.append(rec["setup"])
    for k in ("cohort", "machine"):
        if rec[k] != record[k]:
            parts.append(f"{k}: {rec[k]}")
    if rec["note"]:
        parts.append(f"note: {rec['note']}")
    return "; ".join(parts)


def table(chapter: str) -> DevelopmentTable:
    """The development record of ``chapter`` with its caption (ParameterError for an unknown chapter,
    DataError for a malformed record file). A chapter without records gets a caption saying so."""
    record = recipes.development(chapter)
    rows = [{COLUMNS[0]: f"{_ENTRY[r['field']]}: {r['key']}", COLUMNS[1]: _measured(r, record),
             COLUMNS[2]: " ".join(r["measurements"])} for r in record["records"]]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if not rows:
        return DevelopmentTable(chapter, frame, f"Development record of {chapter}: none. The recipe's "
                                "reasons cite no measurements of development runs.")
    commits = ", ".join(dict.fromkeys(r["commit"] for r in record["records"]))
    caption = (f"Development record of {chapter}: these numbers come from development runs (a few from "
               f"earlier runs of the book, where a row says so), not from the run on this page. They are the "
               f"measurements behind the recipe's reasons, kept as they were written "
               f"(npcrepro/chapters/{chapter}/development.json). Cohort, unless a row names another: "
               f"{record['cohort']} Machine: {record['machine']}. Commits that wrote them: {commits}.")
    return DevelopmentTable(chapter, frame, caption)
