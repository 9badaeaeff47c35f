"""The leaderboard's common protocol: one cohort, one split, one budget, one loss for every network.

No paper defines this protocol, so there are no PAPER values; each network's deviations from its own
paper's recipe are listed in the chapter's Deviations.
"""

#: Every method key, in the leaderboard's order (see npcrepro.chapters.leaderboard.methods.METHODS).
ALL_METHODS = ["unet_ct", "deeplab_ct", "luo_ours_ct", "fcn8_ct", "unet_cet1", "li2018_cnn", "guo_cnn",
               "vnet", "bunet", "cscn", "unet3d_cet1", "mmfnet"]

#: Methods the cpu profile leaves out to fit its budget (they train at gpu): V-Net is the most costly
#: network per iteration and no paper's claim or proposed method.
GPU_ONLY = ["vnet"]

#: nnU-Net's input sets (npcrepro.chapters.leaderboard.nnunet.INPUTS): CET1, T1 + T2 + CET1, CT.
NNUNET_INPUTS = ("cet1", "mri", "ct")

_COMMON = dict(lr=2e-3, schedule="cosine", cycles=1, warmup=0.1, grad_clip=1.0, ema=0.0, fg_prob=0.5,
               negatives=["GTVnd"], negative_prob=0.25, bn_batches=256, bn_fixed_3d=0.25,
               background_fraction=0.5, threshold=0.5,
               nsd_mm=2.0, overlap=0.25, n_boot=2000, methods=list(ALL_METHODS), seeds=1, structure="GTVp",
               external=[], threads=None, ct_channel="CECT", nnunet=[], nnunet_configurations=["2d"],
               nnunet_epochs=1000, nnunet_iterations=250)

PROFILES = {
    "smoke": dict(_COMMON, n_cases=5, n_test=2, iterations_2d=4, iterations_3d=3, batch_2d=4, batch_3d=2,
                  crop_2d=[64, 64], patch_3d=[8, 32, 32], width=0.25, workers=2, real_cases=0, bn_batches=64),
    "cpu": dict(_COMMON, lr=5e-3, cycles=2, n_cases=40, n_test=20, iterations_2d=800, iterations_3d=480,
                batch_2d=8, batch_3d=2,
                crop_2d=[64, 64], patch_3d=[16, 48, 48], width=0.5, workers=2, real_cases=0, seeds=2,
                methods=[m for m in ALL_METHODS if m not in GPU_ONLY]),
    "gpu": dict(_COMMON, seeds=3, n_cases=100, n_test=25, iterations_2d=20000, iterations_3d=20000, batch_2d=16,
                batch_3d=2, crop_2d=[256, 256], patch_3d=[32, 160, 160], width=1.0, workers=1,
                real_cases=64, real_test=16, nnunet=list(NNUNET_INPUTS), nnunet_configurations=["2d", "3d_fullres"]),
}

#: gpu-lite: every network at width 1 on the gpu phantom, whole-resolution crops and patches; fewer
#: patients and iterations (sized by `npcrepro plan` for a short GPU loan); 2 seeds as at cpu (3 would take
#: the leaderboard alone to about 14 of the loan's 40 minutes); no real-CT track. nnU-Net: its 2d
#: configuration for 40 epochs of 100 iterations (not yet measured on a GPU; its default is 1000 x 250).
PROFILES["gpu-lite"] = dict(PROFILES["gpu"], n_cases=40, n_test=12, iterations_2d=8000, iterations_3d=8000,
                            real_cases=0, seeds=2, nnunet_configurations=["2d"], nnunet_epochs=40,
                            nnunet_iterations=100)

HELP = {
    "methods": "method keys to train (baselines and cascade stages are added); see the method table",
    "n_cases": "phantom patients",
    "n_test": "held-out test patients (the same for every method)",
    "iterations_2d": "training iterations of every 2D method",
    "iterations_3d": "training iterations of every 3D method",
    "batch_2d": "2D batch size (slices)",
    "batch_3d": "3D batch size (patches)",
    "crop_2d": "random 2D training crop (y, x) in voxels",
    "patch_3d": "3D training patch and sliding window (z, y, x) in voxels",
    "width": "channel multiplier of every network (1: the papers' widths)",
    "lr": "Adam learning rate of every method (peak, after the warm-up)",
    "schedule": "learning-rate schedule of every method over its budget (cosine, poly or constant)",
    "cycles": "warm restarts: the schedule (with its warm-up) runs this many times over the budget (2: the "
              "network at half its budget has finished a whole schedule)",
    "warmup": "share of the budget (of each cycle) spent ramping the learning rate linearly up from 0",
    "grad_clip": "gradient-norm clipping of every method (0: off)",
    "ema": "decay of the moving average of every method's weights that is scored (0: off; 0.99 "
           "averages over about the last 100 iterations)",
    "fg_prob": "share of crops/patches centred on tumour",
    "negatives": "hard-negative structures: crops/patches not on tumour are placed on one of these with "
                 "probability negative_prob (where the patient has one)",
    "negative_prob": "share of crops/patches placed on a hard-negative structure",
    "bn_batches": "batch-norm statistics of every scored network (half and full budget) from this many "
                  "training batches (0: the running averages of training)",
    "bn_fixed_3d": "share of each learning-rate cycle, at its end, over which the 3D networks train with "
                   "their batch-norm statistics measured (bn_batches) and held fixed, as they are scored (0: off)",
    "background_fraction": "2D: slices without tumour per slice with tumour",
    "threshold": "probability threshold of the predicted masks",
    "nsd_mm": "surface Dice tolerance in mm",
    "overlap": "sliding-window overlap (2D crops and 3D patches)",
    "n_boot": "bootstrap resamples of the confidence intervals",
    "workers": "methods trained at once (processes, cores split between them)",
    "real_cases": "OpenKBP training patients (train-pats) for the CT track (0: off)",
    "real_test": "OpenKBP held-out test patients (test-pats) the CT track is scored on (0: a split of the "
                 "training patients instead)",
    "structure": "target structure on the phantom",
    "ct_channel": "the CT the CT methods read: CECT (contrast-enhanced) or CT (non-contrast); the OpenKBP "
                  "track reads its own CT",
    "external": "folders of NIfTI predictions of other models (the test patients), each one more row",
    "nnunet": "input sets nnU-Net v2 trains on by its own pipeline, one row each (cet1, mri: T1+T2+CET1, ct); "
              "needs the environment of scripts/setup_nnunet_env.sh",
    "nnunet_configurations": "nnU-Net configurations trained per input set (2d, 3d_fullres)",
    "nnunet_epochs": "nnU-Net's epochs (its default: 1000)",
    "nnunet_iterations": "nnU-Net's training iterations per epoch (its default: 250)",
}

ALLOWED = {"schedule": ["cosine", "poly", "constant"], "ct_channel": ["CECT", "CT"], "nnunet": list(NNUNET_INPUTS),
           "nnunet_configurations": ["2d", "3d_fullres"]}

CHOICES = {
    "learning rate, cycles and budgets at cpu": "peak learning rate 5e-3, the schedule run twice over the "
        "budget, 800 iterations for the 2D methods and 480 for the 3D ones. At 2e-3 with one cycle the slow "
        "learners (MMFNet, the 3D U-Net, DeepLabv3+) were far from converged; at 5e-3 they trained further, "
        "but a network caught at half its budget, mid-schedule at a high learning rate, scored almost "
        "anything between failure and its final DSC. With two cycles the network at half its budget has "
        "finished a whole schedule, so the convergence flag compares two finished trainings; 3e-3 with two "
        "cycles left the slow learners farther from converged than 5e-3. The budgets rose from 640 2D and "
        "360 3D iterations because li2018's CNN, guo2021's 3D CNN and the 3D U-Net still gained a little "
        "more than the flag allows over their second half; so close to the flag's line, larger budgets "
        "moved them to either side of it from run to run, and DeepLabv3+ was still learning at every budget "
        "tried, so the budgets stayed at 800 and 480. The development record gives the measurements. The "
        "gpu profile keeps 2e-3 and one cycle: not measured there",
    "3D patch placement": "the 3D networks train on patches of which fg_prob hold a tumour voxel at a "
        "random position of the patch, not at its centre; the others are placed inside the volume at "
        "random. Centred on tumour, every tumour patch taught the networks that tumour lies at the "
        "centre of a patch. Where a sliding window showed MMFNet nothing else to go by, in the corner "
        "windows (a third of all) that lie in the air around the head, one seed found tumour at the "
        "centre of each such window: its DSC fell from half to full budget and its predicted volume was "
        "several times the tumour's on every test patient. With the tumour anywhere in its patch no "
        "seed predicted tumour outside the body. Centring the other patches anywhere in the volume, so "
        "that the corners are trained on as often as the middle, stopped it too, but cost BUNet one "
        "seed's DSC (fewer patches of the head to learn what is not tumour). The batch-norm statistics "
        "and the window's size were ruled out; the development record gives the measurements",
    "hard negatives": "a quarter of all training crops and patches are placed on the patient's nodes "
        "(GTVnd) where it has any, the node voxel at a random position of the crop or patch; the "
        "other crops and patches not on tumour are placed at random. On contrast-enhanced T1 the nodes "
        "enhance as the primary tumour does, and a network that saw them only where a random crop happened "
        "to fall learnt to mark them: guo2021's 3D CNN, whose receptive field is a few centimetres, "
        "marked most nodes of every test patient and one of its seeds fell from half to full budget on "
        "the development cohort. The nodes are contoured in every NPC plan (GTVnd), so a real dataset "
        "has them; they are never a target here. The development record gives the measurements",
    "batch-norm statistics": "every network is scored (at half and at full budget) with batch-norm "
        "statistics measured over bn_batches training batches, not with the running averages that "
        "training leaves. Those weigh the last ten or so batches most; with batches of two 3D patches, "
        "one on the tumour and one anywhere, they depend on which patches came last, and guo2021's 3D "
        "CNN (a small receptive field, nothing but local contrast to go by) marked far more than the "
        "tumour with the running averages of one seed, and not with the same weights' measured "
        "statistics. The measured statistics are themselves an estimate from the batches drawn: over "
        "64 batches (128 3D patches) another draw of them moved some development patients' DSC enough "
        "to move a seed's mean, so a seed's result depended on the draw; over 256 batches hardly at "
        "all. Measuring adds no training step (a forward pass per batch), and training is the same "
        "with it or without; the smoke profile keeps 64. The development record gives the measurements",
    "batch-norm statistics held fixed (3D)": "the 3D networks train the last bn_fixed_3d of each "
        "learning-rate cycle with their batch-norm statistics measured where that share starts and then "
        "held fixed, as they are scored; the 2D networks train every step on their batch's statistics. "
        "A 3D batch is two patches, and a network trained on the statistics of two patches learns to "
        "depend on them: a window far from the average patch (one filled by a large tumour) is then "
        "normalised otherwise when the network is scored than any batch was in training. In the "
        "stability benchmark (the evaluation cohort, torch's plain kernels) one seed of the 3D U-Net "
        "found three large tumours at half budget and lost most of them at full budget; the same "
        "weights, each window normalised by its own statistics, found them again, and the same training "
        "with the end of each cycle trained as it is scored did not fall. Instance normalisation "
        "removes the dependence too, but changes the papers' networks (all use batch norm) and left the "
        "3D U-Net far from converged at half budget. The share was chosen on the development cohort; "
        "the development record gives the measurements",
    "CT": "the CT methods (U-Net, xue2020's DeepLabv3+, luo2020's networks) all read the phantom's "
          "contrast-enhanced CT, one common input for the CT track: the CT xue2020 used (a contrast-enhanced "
          "simulation CT, Sec. 1.1), so its row stands for its paper. luo2020 does not say whether its CT was "
          "enhanced; its chapter reads the non-contrast CT, and its rows here say so",
}

#: Types of the parameters that are None at every profile.
TYPES = {"threads": "int"}
