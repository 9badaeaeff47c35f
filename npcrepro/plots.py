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


def panel_grid(n: int, *, cols: int = 3, width: float = 4.2, height: float = 2.8):
    """A figure of ``n`` panels (one per method, say) in rows of at most ``cols``, each ``width`` x
    ``height`` inches; the grid's unused panels are blanked. Returns (figure, the ``n`` axes)."""
    import matplotlib.pyplot as plt

    cols = min(cols, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:max(n, 1)]
