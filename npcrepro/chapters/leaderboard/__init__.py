"""The leaderboard: every method of the five papers under one common protocol.

None of the five papers compared its method with the others on the same patients. This module trains
each paper's network (and a plain U-Net baseline per input family) on **one cohort, one split, one
budget, one loss and one evaluation**, so that differences come from the architectures, their sizes
(each at ``width`` times its paper's widths, or as :func:`.methods.built_as` says) and their inputs:

* cohort and split: the phantom at the profile's preset, ``n_cases`` patients, a seeded hold-out of
  ``n_test`` test patients (the same for every method); on OpenKBP CT (when present) the CT methods
  again, with PTV70 as the stand-in target;
* input: the modality each paper used (CT for xue2020/luo2020; contrast-enhanced T1 for li2018,
  guo2021 and the single-sequence chen2020 row; T1+T2+CET1 for MMFNet), CT windowed to [-200, 300] HU
  and MR z-scored per patient;
* training: Adam at peak ``lr`` after a linear warm-up over ``warmup`` of the budget, then a
  ``schedule`` (cosine) decay to 0 at its end, the whole run ``cycles`` times over the budget (2: a
  warm restart at its middle), gradient norm clipped at ``grad_clip``;
  ``iterations_2d`` / ``iterations_3d`` iterations, ``seeds`` seeds per method; loss = soft Dice +
  cross-entropy on the final output (averaged over deep-supervision outputs where a network has them:
  luo2020's two stages, li2018's three score maps, each against the target averaged to its grid),
  2D methods on random ``crop_2d`` crops of axial slices (tumour slices plus half as many others), 3D
  methods on random ``patch_3d`` patches (``fg_prob`` holding a tumour voxel); of the others,
  ``negative_prob`` of all samples are placed on a hard-negative structure (``negatives``: the nodes,
  which enhance like the tumour), the rest at random; every network is scored with batch-norm
  statistics measured over ``bn_batches`` training batches (:mod:`npcrepro.engine.batchnorm`), and
  the 3D networks train the last ``bn_fixed_3d`` of each cycle with those statistics held fixed;
* inference: Gaussian sliding window over the whole volume with the training crop (2D, slice by
  slice) or patch (3D), overlap ``overlap``: a network trained on crops is tested on inputs of that
  size (DeepLabv3+'s image pooling and atrous rates otherwise meet a feature map they never saw);
  threshold 0.5, no post-processing;
* evaluation: DSC, HD95, ASSD and NSD (tolerance ``nsd_mm``) on the native grid with
  :func:`npcrepro.evaluation.evaluate_cases`, 95% bootstrap CIs, paired t-test and Wilcoxon against
  the U-Net baseline that sees the same images.

Every network is one method of the experiment runner (:mod:`npcrepro.engine.experiment`): jobs run
on its process pool (``workers``), write their predictions on each case's grid into the run folder
and their per-case rows into metrics.csv; CSCN's fine stage runs after BUNet and loads it. The
networks are built by their own chapters (``network()`` of ``npcrepro.chapters.<paper>.methods``) at
the profile that runs. Parts: ``prepare`` (normalisation, samples), ``methods`` (the entries and the
common recipe), ``tracks`` (the phantom and OpenKBP runs), ``report`` (tables, claims, figures).
"""
