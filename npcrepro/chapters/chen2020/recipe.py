"""chen2020 (MMFNet): the recipe as plain data.

``gpu`` is the paper's scale (Sec. IV-A/C); ``cpu`` and ``smoke`` shrink the cohort, the crop, the
widths and the budget, never the code path. ``crop`` is (z, y, x) voxels on the working grid (XY
resampled to ``spacing_xy`` mm when set), ``offset`` the augmentation's maximal centre shift,
``width`` the channel multiplier of every network, ``max_folds`` how many of the ``k_folds`` folds run.
"""

#: The rows that answer the paper's three claims (best single sequence = the self-transfer
#: pre-trainings, plain multi-encoder fusion, the fusion block without and with self-transfer).
CORE_ROWS = "single_t1,single_t2,single_cet1,multi_encoder_mm,multi_mlp_std,mmfnet_full"

_COMMON = dict(z_step=4, rotate_deg=5.0, flip=True, pool_sizes=None, lr=1e-3, val_fraction=0.25,
               infer_batch=4, threshold=0.5, dice_form="eq1", seeds=1, workers=1)

PROFILES = {
    "smoke": dict(
        _COMMON, n_cases=6, phantom_preset="smoke", spacing_xy=4.0, crop=[8, 32, 32], offset=[2, 4, 4],
        width=0.25, batch_size=2, iterations_per_epoch=2, epochs=2, warmup_epochs=1, patience=2,
        lr_finetune=1e-4, k_folds=3, max_folds=1, patch_size=9, patch_batch_size=16,
        patch_samples_per_case=32, methods=CORE_ROWS, threads=1, amp=False),
    "cpu": dict(
        _COMMON, n_cases=40, phantom_preset="cpu", spacing_xy=2.6667, crop=[16, 48, 48], offset=[4, 6, 6],
        width=0.5, batch_size=4, iterations_per_epoch=10, epochs=56, warmup_epochs=8, patience=10,
        lr=2e-3, lr_finetune=2e-3, k_folds=2, max_folds=1, patch_size=9, patch_batch_size=64,
        patch_samples_per_case=256, methods=CORE_ROWS, threads=1, amp=False, seeds=2),
    "gpu": dict(
        _COMMON, n_cases=149, phantom_preset="gpu", spacing_xy=0.5, crop=[16, 256, 256], offset=[4, 32, 32],
        width=1.0, batch_size=8, iterations_per_epoch=75, epochs=100, warmup_epochs=5, patience=10,
        lr_finetune=1e-4, k_folds=5, max_folds=5, patch_size=33, patch_batch_size=64,
        patch_samples_per_case=2048, methods="all", threads=None, amp=True, seeds=3),
}

#: gpu-lite: the paper's grid, windows, widths and epochs; the cpu profile's six networks (the central
#: comparison), one fold, fewer patients (sized by `npcrepro plan` for a short GPU loan).
PROFILES["gpu-lite"] = dict(PROFILES["gpu"], n_cases=30, max_folds=1, methods=PROFILES["cpu"]["methods"],
                            seeds=1)

HELP = {
    "phantom_preset": "digital phantom preset when the data are the phantom",
    "spacing_xy": "in-plane spacing (mm) the cases are resampled to; None keeps the original",
    "crop": "network input (z, y, x) voxels, centred in-plane on the Otsu box of T1",
    "z_step": "step (slices) of the training and inference windows along z",
    "offset": "maximal random shift (z, y, x) of the window centre during training",
    "rotate_deg": "maximal random in-plane rotation (degrees) during training",
    "flip": "random vertical flip during training",
    "width": "channel multiplier of every network (1: the paper's widths)",
    "pool_sizes": "MMFNet pooling sizes per level (None: 2x2x2 everywhere)",
    "batch_size": "windows (3D) or slices (2D U-Net) per update",
    "iterations_per_epoch": "updates per epoch",
    "epochs": "maximal epochs (early stopping may end sooner)",
    "warmup_epochs": "self-transfer: epochs with frozen pre-trained encoders at lr",
    "patience": "early stopping: epochs without a lower validation loss",
    "lr": "Adam learning rate (every row; the self-transfer warm-up)",
    "lr_finetune": "Adam learning rate after the self-transfer warm-up",
    "k_folds": "cross-validation folds by patient",
    "max_folds": "how many of the k_folds folds run",
    "val_fraction": "fraction of each training part held out for early stopping",
    "patch_size": "patch (pixels) of the patch-based CNNs",
    "patch_batch_size": "patches per update of the patch-based CNNs",
    "patch_samples_per_case": "patch draws per patient per pass (patch-based CNNs)",
    "infer_batch": "windows per forward pass at inference",
    "methods": "rows to run: 'all', 'table1', 'table2' or comma-separated keys (self-transfer "
            "rows bring their single_* pre-trainings)",
    "seeds": "training seeds per row (seed, seed+1, ...)",
    "threads": "torch threads per training job on the CPU (None: the runner's default)",
    # Eq. 1 vs the smoothed form: measured once, Eq. 1 trains as well (measurements: the development
    # record, npcrepro/chapters/chen2020/development.json).
    "dice_form": "Dice loss: eq1 (Eq. 1 as printed, eps inside the factor 2) or smoothed (2 sum pg + eps "
                 "on top, 0 for an empty window predicted empty)",
    "amp": "automatic mixed precision on CUDA (no effect on the CPU)",
}

ALLOWED = {"dice_form": ["eq1", "smoothed"]}

#: {parameter: (item of npcrepro.chapters.chen2020.paper.INFO.recipe, the paper's value)}
PAPER = {
    "spacing_xy": ("preprocessing", 0.5),
    "crop": ("input_size", [16, 256, 256]),
    "z_step": ("input_size", 4),
    "offset": ("augmentation", [4, 32, 32]),
    "rotate_deg": ("augmentation", 5.0),
    "flip": ("augmentation", True),
    "batch_size": ("batch_size", 8),
    "iterations_per_epoch": ("updates_per_epoch", 75),
    "epochs": ("epochs", 100),
    "patience": ("early_stopping", 10),
    "warmup_epochs": ("schedule", 5),
    "lr": ("lr", 1e-3),
    "lr_finetune": ("lr", 1e-4),
    "dice_form": ("loss_form", "eq1"),
    "amp": ("precision", False),
}

DEVIATIONS = {
    "amp": "gpu: mixed precision (bfloat16 autocast where supported) to fit the paper's scale into the "
           "device budget; the paper's PyTorch 0.4.1 trained in float32. The Dice sums are small "
           "(at most 16 x 256 x 256 voxels) and the loss is compared in float32, so the effect is "
           "expected to be small, but it is not measured",
    "spacing_xy": "the crop keeps the paper's 128 mm field of view with coarser pixels, so that a "
                  "network fits the cpu budget (smoke: a code-path check only)",
    "crop": "the paper's 128 mm x 128 mm x 16 slices at the coarser in-plane spacing (smoke: 8 slices)",
    "offset": "the paper's 16 mm in-plane shift at the coarser spacing (smoke: smaller)",
    "batch_size": "fewer windows per update to fit the cpu budget",
    "iterations_per_epoch": "shorter epochs to fit the cpu budget (validation and early stopping "
                            "still once per epoch)",
    "epochs": "fewer epochs to fit the cpu budget; networks still improving at the end are compared "
              "as they are (the training curves and the convergence table show which). cpu: 56 epochs "
              "of 10 updates: at 20 the Dice loss spent much of the budget on its plateau, and at 40 most "
              "networks were not yet flagged converged (the development record gives the measurements)",
    "patience": "smoke: scaled with its two epochs (the cpu profile keeps the paper's 10)",
    "warmup_epochs": "cpu: the decoder must leave the Dice plateau before the encoders are released, "
                     "which takes more of the (much shorter) epochs than the paper's 5 of 75 updates; "
                     "smoke: one epoch, a code-path check",
    "lr": "cpu: 2e-3. At the paper's 1e-3 the T1 and the multi-encoder networks were still learning at "
          "the end of the cpu budget; at 2e-3 they had settled, with final DSCs no lower, while 3e-3, or "
          "2e-3 with fewer epochs, left networks still learning (the development record gives the "
          "measurements). The gpu profile keeps 1e-3",
    "lr_finetune": "cpu: in the few updates after the warm-up 1e-4 barely moves the network (tried on "
                   "the phantom; the development record gives the measurements), so at this budget 1e-4 "
                   "would measure the budget, not self-transfer; at the cpu `lr` (2e-3) the rows with and "
                   "without self-transfer train at the same rate and differ only in their start",
}

CHOICES = {
    "seeds": "not stated: two trainings per network at cpu (seed and seed + 1), three at gpu; a claim averages "
             "each patient's scores over them first (seeds are not patients). gpu-lite trains one, sized for a "
             "short GPU loan; the claims tables give the trainings behind each verdict",
    "intra-body normalisation": "z-score with the mean and sd of the body voxels (Otsu foreground of "
                                "each sequence, largest component, holes filled), as ref. [40] describes",
    "Otsu bounding box": "on T1 (the grid CET1 and T2 are registered to); the crop is centred in-plane "
                         "on the box centre and slides along z over the whole volume",
    "padding": "windows reaching outside the volume are filled with each sequence's lower clip value "
               "(the normalised background level)",
    "vertical flip": "up-down flip of the axial image (the literal meaning; torchvision's convention)",
    "learning rate without self-transfer": "`lr` (the rate of the single-modality networks)",
    "Dice loss per sample": "one soft Dice per window, averaged over the batch",
    "early stopping": "applies to every row, on the validation windows' mean loss; the weights of the "
                      "best validation epoch are kept",
    "frozen encoders": "weights and batch-norm statistics stay as pre-trained during warm-up",
    "initialisation": "PyTorch's default (the paper's framework, PyTorch 0.4.1, initialised convolutions "
                      "the same way) except the output layer of every row, which starts small with a 1 % "
                      "foreground prior so that the Dice loss leaves its initial plateau sooner",
    "patch-based CNN": "unpadded 5x5 convolutions whose receptive field is the patch (33 px at 0.5 mm; "
                       "9 px at the smaller profiles), trained on class-balanced centre pixels "
                       "with binary cross-entropy; one branch per sequence for the multi-modality version",
    "2D U-Net": "npcrepro unet2d with widths (32, 64, 128, 256, 512) x width, on every axial slice of "
                "the crop, same augmentation and Dice loss",
    "3D U-Net": "npcrepro unet3d with widths (8, 16, 32, 64, 128) x width (one MMFNet encoder's scale)",
    "Dice loss per patient": "Eq. 1 over the patient's whole volume: 1 - 2 (sum pg + 1) / (sum p + sum g + 1)",
    "AP": "step-wise area under the precision-recall curve over all distinct probabilities "
          "(sklearn's average_precision_score)",
    "self-transfer pre-trainings": "the single_* rows are methods of their own, trained on the same "
                                   "fold and seed before the rows that copy their encoders",
}

#: Types of the parameters that are None at every profile.
TYPES = {"pool_sizes": "list"}
