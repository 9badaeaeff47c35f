"""Report sections that every chapter shows the same way, written once.

A chapter's notebook keeps the section's heading (so that it is in the page's table of contents) and
calls the function here, which shows the standard explanation, with its numbers taken from the code
that applies them, and returns the section's table. A chapter adds only what is particular to it
(``note``).
"""
from __future__ import annotations

__all__ = ["convergence_text", "convergence"]


def convergence_text(tolerance: float | None = None, note: str = "") -> str:
    """The Convergence section's explanation (Markdown): how the half-budget check works, at
    ``tolerance`` (default :data:`npcrepro.engine.results.CONVERGENCE_TOLERANCE`), then ``note``."""
    from npcrepro.engine.results import CONVERGENCE_TOLERANCE

    tol = CONVERGENCE_TOLERANCE if tolerance is None else float(tolerance)
    text = ("Every network of this run is also scored with its weights at half its training budget, on the same "
            f"test patients. A network whose mean DSC moved by at most {tol:g} over the second half is flagged "
            "*converged at this budget*; one that still moves is not, and its numbers are a lower bound of what "
            "it can do. With several seeds the table gives each seed's mean DSC and their spread.")
    return text + (" " + note.strip() if note.strip() else "")


def convergence(results, note: str = "", tolerance: float | None = None):
    """Show the Convergence section's explanation and return its table
    (:meth:`npcrepro.engine.results.Results.convergence` with the methods' labels)."""
    from IPython.display import Markdown, display

    from npcrepro.engine.results import CONVERGENCE_TOLERANCE

    tol = CONVERGENCE_TOLERANCE if tolerance is None else float(tolerance)
    display(Markdown(convergence_text(tol, note)))
    return results.convergence(tolerance=tol, labels=True)
