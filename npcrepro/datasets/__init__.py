"""Datasets: the on-disk format (nnU-Net v2 raw + per-structure masks), the in-memory Case, splits,
and adapters that convert real sources into the format."""
from npcrepro.datasets.case import Case
from npcrepro.datasets.format import Dataset, open_cached, open_dataset, write_dataset
from npcrepro.datasets.splits import (Fold, SliceFold, holdout, kfold, leave_one_out, load_splits, make_splits,
                                      save_splits, slice_kfold)

__all__ = ["Case", "Dataset", "Fold", "SliceFold", "holdout", "kfold", "leave_one_out", "load_splits",
           "make_splits", "open_cached", "open_dataset", "save_splits", "slice_kfold", "write_dataset"]
