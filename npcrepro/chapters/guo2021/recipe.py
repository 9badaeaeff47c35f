"""guo2021 (cascaded 3D CNN, CSCN): profile sizes, recipe values with their paper items, choices.

``gpu`` is the paper's scale (120 patients, 1 mm voxels, 5 rounds, 50000 iterations, x0.9 every 500);
``cpu`` and ``smoke`` shrink the cohort, the voxel size (so the box holds fewer voxels), the widths and
the budget, never the code path. ``patch`` is the canonical block (thin axis first), ``infer_window``
the canonical sliding window at inference (the networks are fully convolutional), ``width`` a width
multiplier of every network's default channels.
"""

#: The paper's final image size, 160 x 198 x 103 voxels at 1 mm, read as x (left-right) 160,
#: y (anterior-posterior) 198 and z (superior-inferior) 103 mm; here in (z, y, x) order.
BOX_MM = [103.0, 198.0, 160.0]

#: Organs of the real two-pass masks used as an inter-observer reference.
REAL_ORGANS = ["Brainstem", "Parotid-Lt", "Parotid-Rt", "Submandibular-Lt", "Submandibular-Rt",
               "Spinal-Cord"]

_COMMON = dict(channel="CET1", box_mm=BOX_MM, patch=[8, 24, 24], fg_prob=0.1, negatives=["GTVnd"],
               negative_prob=0.25, flip=True, lr=1e-3,
               gamma=2.0, infer_window=[8, 24, 24], fusion="mean", fusion_weight=0.5, methods="all",
               view_fusion="probabilities", seeds=1)

PROFILES = {
    "smoke": dict(_COMMON, n_cases=4, phantom_preset="smoke", spacing_mm=4.0, k_folds=2, n_val=1,
                  max_rounds=1, cross_fit=0, workers=1, samples_per_case=48, val_samples_per_case=6, batch_size=4,
                  iterations=4, eval_every=2, decay_every=1, width=0.25, acd_layers=[1, 1, 1],
                  overlap=0.25, infer_batch=16, figure_cases=2, real_organs=["Brainstem"], real_scans=1, threads=1),
    # cpu: 1500 iterations (20 decays, one every 75): at 900 four of the five networks gained 0.04-0.07
    # over the second half of their budget on the development cohort at phantom version 3; at 1500 every
    # one stayed within 0.03 of its half-budget DSC. 40 patients: with 10, a round trained on 4 and
    # tested 5, and the networks that passed the bars on the development cohort missed them on the
    # evaluation cohort; 40 give each network 19 training patients and 20 test patients (inference is
    # cheap next to training, and the budget is in iterations, not epochs). Measurements:
    # npcrepro/chapters/guo2021/development.json.
    "cpu": dict(_COMMON, n_cases=40, phantom_preset="cpu", spacing_mm=3.0, k_folds=2, n_val=1,
                max_rounds=1, cross_fit=0, workers=2, samples_per_case=600, val_samples_per_case=24, batch_size=8,
                iterations=1500, eval_every=50, decay_every=75, width=0.5, acd_layers=[1, 1, 1],
                overlap=0.25, infer_batch=16, figure_cases=3, real_organs=REAL_ORGANS[:3], real_scans=7, threads=1,
                methods="CSCN,BUNet,CNN,ACDNet,Deeplab", seeds=2),
    "gpu": dict(_COMMON, n_cases=120, phantom_preset="gpu", spacing_mm=1.0, k_folds=5, n_val=9,
                max_rounds=5, cross_fit=3, workers=1, samples_per_case=5000, val_samples_per_case=60, batch_size=32,
                iterations=50000, eval_every=1000, decay_every=500, width=1.0, acd_layers=[2, 2, 2],
                overlap=0.5, infer_batch=256, figure_cases=3, real_organs=REAL_ORGANS, real_scans=7, threads=None,
                seeds=3),
}

#: gpu-lite: the paper's 1 mm voxels, blocks, widths and 50000 iterations (small blocks: minutes on a
#: GPU); one round of the cross-validation on fewer patients (sized by `npcrepro plan`).
PROFILES["gpu-lite"] = dict(PROFILES["gpu"], n_cases=30, n_val=3, max_rounds=1, seeds=1)

HELP = {
    "phantom_preset": "phantom preset generated when data is 'phantom'",
    "channel": "input image channel (the paper: T1 THRIVE; the phantom's CET1 stands in)",
    "spacing_mm": "isotropic working voxel size in mm (paper 1 mm)",
    "box_mm": "fixed head crop (z, y, x) in mm, centred on the body (paper 103 x 198 x 160)",
    "patch": "training block (thin, a, b) in voxels, cut along z, y or x (paper 24 x 24 x 8)",
    "k_folds": "rounds of the random split (each tests about 1/k of the patients)",
    "n_val": "validation patients per round (best-validation weights are kept)",
    "max_rounds": "rounds that run (the first n of the k_folds)",
    "workers": "training jobs (method x round x seed) at once, in worker processes",
    "samples_per_case": "training blocks per patient per pass",
    "val_samples_per_case": "fixed validation blocks per patient",
    "fg_prob": "probability that a training block is centred on a tumour voxel (else uniform)",
    "negatives": "hard-negative structures (never targets): blocks not on tumour are centred on one of "
                 "these with probability negative_prob, where the patient has one",
    "negative_prob": "probability that a training block is centred on a hard-negative voxel",
    "flip": "random left-right flip of training blocks",
    "batch_size": "blocks per training batch",
    "iterations": "training iterations per network",
    "eval_every": "iterations between validation losses (and checkpoints)",
    "lr": "Adam learning rate",
    "decay_every": "iterations between x0.9 learning-rate decays",
    "gamma": "focal-loss exponent of the distance-weighted focal loss",
    "width": "width multiplier of every network's default channels",
    "acd_layers": "ACDNet's layers per dense block",
    "infer_window": "sliding window (thin, a, b) at inference, in each of the three views",
    "overlap": "sliding-window overlap",
    "infer_batch": "windows per inference batch",
    "fusion": "rule fusing the coarse (BUNet) and fine (ACDNet) probabilities",
    "view_fusion": "how the three views are fused: probabilities (the views' sliding-window maps "
                   "averaged; the only form implemented)",
    "cross_fit": "ACDNet's coarse training inputs: 0 takes BUNet's predictions of its own training "
                 "patients; k (at least 2) predicts each patient with a BUNet trained without it (k parts)",
    "fusion_weight": "weight of the coarse probability in the fusion",
    "methods": "'all' or a comma-separated subset of CSCN, BUNet, CNN, ACDNet, Deeplab, V-Net",
    "figure_cases": "patients shown in the 2D results figure",
    "real_organs": "organs of the real two-pass CT masks used as an inter-observer reference",
    "real_scans": "scans of the real two-pass CT masks read",
}

ALLOWED = {"channel": ["T1", "CET1", "T2", "CT"], "fusion": ["mean", "product", "max"],
           "view_fusion": ["probabilities"]}

#: parameter -> (item of npcrepro.chapters.guo2021.paper.INFO.recipe, the paper's value). Blocks are written
#: thin axis first: the paper's 24 x 24 x 8 is [8, 24, 24] here.
PAPER = {
    "lr": ("lr", 1e-3),
    "iterations": ("iterations", 50000),
    "decay_every": ("schedule", 500),
    "spacing_mm": ("preprocessing", 1.0),
    "box_mm": ("preprocessing", BOX_MM),
    "patch": ("input_size", [8, 24, 24]),
    "infer_window": ("input_size", [8, 24, 24]),
    "fg_prob": ("augmentation", 0.0),
    "negatives": ("augmentation", []),
    "negative_prob": ("augmentation", 0.0),
    "flip": ("augmentation", True),
    "view_fusion": ("view_fusion", "decoder"),
}

DEVIATIONS = {
    "iterations": "compute budget: the small profiles train a few hundred iterations (paper: 50000)",
    "decay_every": "the paper decays x0.9 every 500 of its 50000 iterations, 100 times, to 0.9^100 = 3e-5 "
                   "of the initial rate (its Fig. 6), so its networks get about 5000 iterations' worth of "
                   "the initial rate and spend the second half of the budget near zero. The cpu profile "
                   "decays 20 times over its 1500 iterations, to 0.9^20, about an eighth of the initial "
                   "rate (about 660 iterations' worth); with the paper's 100 decays it would get 150. In "
                   "development runs with 40 and 60 decays, BUNet's and Deeplab's DSC at half and at full "
                   "budget came closer together but ended lower: more decay makes the two halves agree by "
                   "stopping the learning, not by finishing it, so the cpu profile keeps 20 (the "
                   "development record gives the measurements)",
    "spacing_mm": "compute budget: the box is the paper's in mm, so coarser voxels mean fewer of them "
                  "(the 24 x 24 x 8 blocks then cover more anatomy)",
    "fg_prob": "the paper draws block centres at random; here a tenth of the blocks are centred on a "
               "tumour voxel so that short trainings see enough tumour",
    "negatives": "the paper draws block centres at random; here a quarter of the blocks are centred on a "
                 "node (GTVnd, never a target). On contrast-enhanced T1 the nodes enhance as the primary "
                 "tumour does; with random centres the networks saw them too rarely to learn that they are "
                 "not tumour, and marked the nodes, the nodal CTV and the vessels far from the tumour of "
                 "every test patient, so that two of the five missed the book's bar. The nodes are "
                 "contoured in every NPC plan, so a real dataset has them (the development record gives "
                 "the measurements)",
    "negative_prob": "see negatives: the share of blocks centred on a node",
    "n_cases": "the paper's 120 patients are not public; the small profiles use fewer phantom patients",
    "max_rounds": "compute budget: the cpu profile runs the first of 2 rounds (paper: 5), so half of "
                  "its patients are tested; the rounds cost about half of the chapter's time each, and "
                  "the cpu book must build in 30 minutes on two cores",
    "width": "compute budget: the small profiles narrow every network (the paper gives no widths)",
    "view_fusion": "the paper fuses the views' features in the upsampling path but describes no layer "
                   "that does it (one sentence of the abstract), so there is nothing to rebuild "
                   "faithfully; the three views' probability maps are averaged instead. The chapter "
                   "measures what fusing the views adds this way: the DSC of each single view beside "
                   "the averaged map (on the working grid), per method",
}

CHOICES = {
    "methods at cpu": "V-Net trains at the gpu profile only: it costs the most per iteration (a quarter "
                      "of the chapter's training time at cpu), and the cpu book must build in 30 minutes "
                      "on two cores; every other method runs at every profile",
    "box axes": "160 x 198 x 103 read as left-right x anterior-posterior x superior-inferior mm, "
                "centred on the body's bounding box (the Otsu foreground of the image); the paper's "
                "'up-down jitter' of the z crop is immaterial once block centres are random, so the "
                "crop is made once, deterministically",
    "intensity normalisation": "z-score over the body (not stated in the paper)",
    "block orientation": "24 x 24 x 8 blocks with the 8-voxel side along z (axial), y (coronal) or x "
                         "(sagittal), one third each, transposed so the thin axis comes first: one "
                         "network per method sees all three views",
    "block centres": "10 % (fg_prob) on a random tumour voxel, 25 % (negative_prob) on a random node "
                     "voxel where the patient has nodes, the rest uniform in the crop (the paper: random "
                     "centres; short budgets need to see some tumour, and the nodes, which enhance like "
                     "it), blocks kept inside the crop",
    "horizontal flip": "left-right (x) flip with probability 1/2, before the transposition",
    "loss": "distance-weighted focal loss (Eq. 6-7) on a 2-class softmax, gamma = 2 (Lin et al.'s "
            "default; the paper only says gamma > 0), distances in mm on the whole crop",
    "batch size": "not stated; profile value",
    "model selection": "the weights of the lowest validation loss are kept (the paper's 9 validation "
                       "patients must serve some purpose; it does not say which)",
    "multi-view fusion": "the three views' sliding-window probability maps are averaged (see Deviations: "
                         "the paper fuses features in the decoder)",
    "cascade input": "ACDNet sees the image and BUNet's coarse map of the whole crop. Which coarse maps "
                     "it trains on is not stated: with cross_fit = 0 (smoke, cpu) BUNet's predictions "
                     "of its own training patients, which are more confident than the maps it sees at "
                     "test time (cross-fitting costs cross_fit more BUNets per round, over the cpu "
                     "budget); with cross_fit = k (gpu: 3) each training patient's map comes from a "
                     "BUNet trained on the other parts, validation patients' from the round's BUNet. "
                     "Cross-fitting at the cpu profile, measured once, made no clear difference to CSCN "
                     "for more CPU time per round (the development record gives the measurements)",
    "probability fusion": "mean of the coarse and fine tumour probabilities (weight 0.5)",
    "evaluation grid": "probabilities are mapped back to the original grid (linear interpolation) and "
                       "thresholded at 0.5; metrics in mm on that grid",
    "F1": "per patient, F1 of the same binary masks equals DSC exactly; the paper's F1 differs from its "
          "DSC, so it was computed some other way (not stated). We also report F1 pooled over all "
          "patients' voxels (TP, FP, FN summed), one candidate",
    "learning-rate decay": "x0.9 every 500 iterations at paper scale; the CPU profiles decay x0.9 every "
                           "iterations/20 (see Deviations: 20 decays instead of the paper's 100)",
    "threads": "1 torch thread per job in the smoke and cpu profiles (the small 3D convolutions run "
               "faster on one thread per core than on several threads sharing a core)",
    "seeds": "not stated: two trainings per network at cpu (seed and seed + 1), three at gpu; a claim averages "
             "each patient's scores over them first (seeds are not patients). gpu-lite trains one, sized for a "
             "short GPU loan; the claims tables give the trainings behind each verdict. Every method of a round "
             "trains with the same seed (the job's), so the block draws are paired across methods",
}
