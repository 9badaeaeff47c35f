"""The NPC digital phantom: the embedded default data every chapter runs on.

A virtual patient is built in physical space (mm) from implicit shapes (anatomy, lesions), then
rendered through every modality the five papers use: planning CT (without and with iodinated
contrast), T1, T2, contrast-enhanced T1 and DCE-MRI, on any grid. Main entry points:

* :func:`make_case` ``(seed, **params) -> Case``: one patient;
* :func:`generate` ``(out_dir, n_cases, seed, *, preset="cpu", ...) -> Dataset``: a cohort on disk;
* :data:`PRESETS` (``smoke``, ``cpu``, ``gpu``), :data:`STRUCTURES`, :data:`DEFAULTS`;
* :func:`measure_cnr`, :func:`dce_curves`: what the images hold (used by the data chapter).

See :mod:`npcrepro.phantom.anatomy` (coordinate frame, organs), :mod:`~npcrepro.phantom.lesions`
(T/N stages, CTVs), :mod:`~npcrepro.phantom.scanners` (intensities, noise, DCE kinetics) and
:mod:`~npcrepro.phantom.raters` (the second observer).
"""
from npcrepro.phantom.make import (GENERATOR_VERSION, ORGANS, RATERS, STRUCTURES, case_factories, case_seed,
                                   channels_for, cohort_record, generate, generator_fingerprint,
                                   iter_cases, make_case)
from npcrepro.phantom.measure import (ASSUMED_T2_PIXEL_MM, CT_TISSUES, RING_MM, contrast_summary, contrast_table,
                                      edge_table, edge_widths, median_iqr,
                                      dce_curves, dice, measure_cnr, ring_contrast, shape_table, survey,
                                      tissue_values)
from npcrepro.phantom.profiles import DEFAULTS, PRESETS, Preset
from npcrepro.phantom.scanners import MODALITIES

__all__ = ["make_case", "generate", "iter_cases", "case_factories", "case_seed", "channels_for",
           "PRESETS", "Preset",
           "DEFAULTS", "STRUCTURES", "RATERS", "ORGANS", "MODALITIES", "GENERATOR_VERSION", "cohort_record",
           "generator_fingerprint", "measure_cnr", "ring_contrast", "contrast_table", "contrast_summary", "median_iqr",
           "edge_widths", "edge_table",
           "ASSUMED_T2_PIXEL_MM", "RING_MM", "dce_curves", "dice", "survey", "shape_table", "tissue_values",
           "CT_TISSUES"]
