"""Template: the run's numbers and figures, read from Results."""
from __future__ import annotations

import numpy as np


def fig_best_case(results, structure: str = "GTVp"):
    """The test case with the largest reference tumour, on its largest slice (reference green,
    prediction red), and the training curves of fold 0."""
    import matplotlib.pyplot as plt

    channel = results.params["channel"]
    cases = {n: results.load_case(n, channels=[channel], structures=[structure]) for n in results.test_cases()}
    name = max(cases, key=lambda n: cases[n].labels.get(structure, np.zeros(1)).sum())
    case = cases[name]
    ref = case.labels.get(structure, np.zeros(case.shape, bool))
    pred = results.prediction("unet2d", name, structure)
    z = int(ref.sum(axis=(1, 2)).argmax())
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    ax0.imshow(case.images[channel][z], cmap="gray")
    ax0.contour(ref[z], levels=[0.5], colors="lime", linewidths=1.2)
    if pred is not None and pred[z].any():
        ax0.contour(pred[z], levels=[0.5], colors="red", linewidths=1.2)
    ax0.set_title(f"{name}, slice {z}: reference (green), prediction (red)")
    ax0.axis("off")
    curves = results.curves("unet2d")
    ax1.plot(curves["iteration"], curves["train_loss"], label="train")
    ax1.plot(curves["iteration"], curves["val_loss"], label="validation")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss (soft Dice + BCE)")
    ax1.legend()
    fig.tight_layout()
    return fig
