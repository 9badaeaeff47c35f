"""Browse run results: images, ground truth, predictions and per-case metrics.

* :class:`Explorer` (ipywidgets): ``Explorer(out_dir="runs", profile="cpu")`` in a notebook;
* :func:`list_runs`, :class:`RunView`: run discovery (cases, prediction labels, metrics);
* :mod:`npcrepro.viz.render`: pure drawing functions (:func:`slice_of`, :func:`render_png`);
* :func:`gallery`: a static matplotlib figure of a run (for pages without a kernel);
* :mod:`npcrepro.viz.static_viewer`: NIfTI exports and the NiiVue viewer that the built book uses
  without a kernel (slices in three planes, channels, ground truth and predictions).
"""
from npcrepro.viz.render import PLANES, best_slice, figure_png, plane_spacing, render_png, slice_of
from npcrepro.viz.runs import CaseView, RunView, default_run, find_run, list_runs, prediction_labels
from npcrepro.viz.explorer import Explorer, gallery, metrics_html

__all__ = ["Explorer", "gallery", "metrics_html", "RunView", "CaseView", "list_runs", "default_run",
           "find_run", "prediction_labels", "PLANES", "slice_of", "plane_spacing", "best_slice",
           "render_png", "figure_png"]
