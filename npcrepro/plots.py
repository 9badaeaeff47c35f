"""Small matplotlib helpers shared by the chapters' reports (no state, no style changes)."""
from __future__ import annotations


def curve_axes(ax, ylabel: str, *, log: bool = False, legend: bool = True) -> None:
    """Label a training-curve panel: x "iteration", y ``ylabel`` (log scale when ``log``), legend."""
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if legend:
        ax.legend(fontsize=8)
