"""luo2020: the two-stage U-Net with MSP, its baselines and ablations on 14 CT structures (plain data)."""

_COMMON = dict(k_folds=5, lr_gamma=0.9, lr_every=10, lr_schedule="scaled", lr_decays=10, warmup=0.0, cycles=1,
               beta=0.9, focal_alpha=0.75, focal_gamma=2.0, dice_eps=1e-3, batch_dice=True, sampling="uniform",
               dice_form="eq1", prior=0.01, split_unit="patient", split_audit_methods=["unet"], deep_supervision=True,
               methods=["unet", "fcn8", "ours", "two_stage_no_msp", "one_stage_msp"],
               real_data="openkbp", real_methods=["unet", "ours"], seeds=1, workers=1, coord_channel=False,
               skip_structures=[], real_prior_threshold=0.15)

#: The structures smoke and cpu leave out: a few pixels wide on their grid (see DEVIATIONS).
_SMALL = ["OpticNerve_L", "OpticNerve_R", "Chiasm"]

#: Methods the cpu profile leaves out (they train at gpu and gpu-lite). FCN-8 and the two ablation networks:
#: at cpu's 600 iterations none of the four networks of the 2 x 2 ablation was converged (the development
#: record, npcrepro/chapters/luo2020/development.json), so its differences measured how fast a design learns,
#: not the paper's claims. The cpu minutes go to Table 1's U-Net and Ours, at 3000
#: iterations each (see CHOICES["methods at cpu"]); the leaderboard sets FCN-8 beside the two-stage
#: network at cpu, on the GTVp.
GPU_ONLY = ["fcn8", "two_stage_no_msp", "one_stage_msp"]

PROFILES = {
    "smoke": dict(_COMMON, n_cases=3, max_folds=1, image_size=[64, 48], stage1_widths=[4, 8, 8, 16, 16],
                  stage2_widths=[4, 8, 8], fcn_widths=[4, 8, 8, 16, 16], fcn_channels=16, batch_size=4,
                  iterations=4, lr=1e-2, sampling="cover", infer_batch=16, real_cases=0, real_test=0,
                  real_iterations=0, real_image_size=[64, 64], threads=1, split_audit_folds=1, coord_channel=True,
                  skip_structures=_SMALL),
    "cpu": dict(_COMMON, n_cases=40, k_folds=2, max_folds=1, image_size=[96, 80], stage1_widths=[8, 16, 32, 64, 64],
                stage2_widths=[8, 16, 32], fcn_widths=[8, 16, 32, 64, 64], fcn_channels=64, batch_size=8,
                iterations=3000, lr=1e-2, sampling="cover", infer_batch=32, real_cases=32, real_test=16,
                real_iterations=1500, real_image_size=[64, 64], threads=1, split_audit_folds=1, coord_channel=True,
                skip_structures=_SMALL, methods=[m for m in _COMMON["methods"] if m not in GPU_ONLY], seeds=2),
    "gpu": dict(_COMMON, n_cases=124, max_folds=5, image_size=None, stage1_widths=[32, 64, 128, 256, 512],
                stage2_widths=[32, 64, 128], fcn_widths=[64, 128, 256, 512, 512], fcn_channels=1024,
                batch_size=16, iterations=20000, lr=1e-3, infer_batch=32, real_cases=64, real_test=16,
                real_iterations=10000, real_image_size=None, threads=None, split_audit_folds=5, seeds=3),
}

#: gpu-lite: every method at the paper's widths on whole slices, 2 of the 5 folds, fewer patients
#: and iterations (sized by `npcrepro plan` for a short GPU loan).
PROFILES["gpu-lite"] = dict(PROFILES["gpu"], n_cases=20, max_folds=2, iterations=3000, real_cases=16,
                            real_iterations=2000, split_audit_folds=2, seeds=1)

HELP = {
    "k_folds": "folds of the cross-validation by patient (at most the number of patients)",
    "max_folds": "folds actually run (the first ones)",
    "methods": "methods trained: unet, fcn8, ours, two_stage_no_msp, one_stage_msp",
    "image_size": "centred in-plane crop (y, x) of every slice; None: whole slices",
    "stage1_widths": "channels per level of stage 1 (and of the U-Net baseline), five levels",
    "stage2_widths": "channels per level of stage 2, three levels",
    "fcn_widths": "channels of FCN-8s's five VGG blocks",
    "fcn_channels": "channels of FCN-8s's convolutionalised fc6/fc7 (kernel 7 from 1024 on, else 3)",
    "iterations": "training iterations per method and fold",
    "lr": "Adam's initial learning rate",
    "lr_schedule": "'scaled': lr_decays decays of x lr_gamma over the run; 'literal': every lr_every iterations; "
                   "'cosine': warm-up then cosine decay to 0, cycles times over the run",
    "warmup": "share of the run (with cosine: of each cycle) spent ramping the learning rate linearly up "
              "from 0",
    "cycles": "cosine: cycles over the run (warm restarts)",
    "lr_gamma": "learning-rate decay factor",
    "lr_every": "iterations between decays of the literal schedule",
    "lr_decays": "decays over the run in the scaled schedule",
    "beta": "weight of the two-sided Dice term (1 - beta weighs the focal term)",
    "focal_alpha": "focal loss weight of the foreground",
    "focal_gamma": "focal loss focusing exponent",
    "dice_eps": "Dice smoothing epsilon",
    "sampling": "training batches: uniform (epochs over the slices) or cover (every batch shows every "
                "structure: a slice of each structure the batch lacks, the rest uniform)",
    "batch_dice": "Dice sums over the whole batch per structure (False: per slice)",
    "dice_form": "Dice term of the loss: eq1 (Eq. 1 as printed: no factor 2, epsilon added to each "
                 "numerator, -1/2 on a structure absent and predicted absent) or normalised (the mean of "
                 "the two smoothed Dice terms, 0 at every perfect prediction)",
    "split_unit": "cross-validation unit: patient (the chapter's runs) or slice (each patient's labelled "
                  "slices dealt into the folds, so one patient's slices sit on both sides; the split audit)",
    "split_audit_methods": "methods the split audit re-runs with slice-level folds ([] turns it off)",
    "split_audit_folds": "slice-level folds the split audit runs (the first ones)",
    "prior": "initial output probability of every structure (None: default initialisation)",
    "deep_supervision": "the two-stage networks are trained on both stages' outputs",
    "real_data": "'openkbp': also run the real-data track when the OpenKBP extract is present; 'off'",
    "real_cases": "OpenKBP training patients (train-pats) of the real-data track (0: off)",
    "real_test": "OpenKBP held-out test patients (test-pats) the real-data track is scored on (0: a split of "
                 "the training patients instead)",
    "real_iterations": "training iterations of the real-data track",
    "real_image_size": "in-plane crop of the real-data track (None: whole slices)",
    "real_methods": "methods of the real-data track",
    "real_prior_threshold": "real-data track: the reference that reads no image (per structure, the voxel-wise mean "
                            "of the masks of the training and validation patients that have it) predicts where the "
                            "mean is at least this",
    "skip_structures": "structures of the paper's 14 (phantom names) left out of training and scoring",
    "coord_channel": "every network also gets each pixel's column (-1 at the left edge, 1 at the right) as an "
                     "input channel, so that left and right structures can be told apart",
    "workers": "training jobs at once (processes; 1 runs them one after the other in this process)",
}

ALLOWED = {"lr_schedule": ["scaled", "literal", "cosine"], "real_data": ["openkbp", "off"],
           "dice_form": ["eq1", "normalised"], "split_unit": ["patient", "slice"],
           "sampling": ["uniform", "cover"]}

#: The paper's stated values (items of npcrepro.chapters.luo2020.paper.INFO.recipe).
PAPER = {
    "lr": ("lr", 1e-3),
    "iterations": ("epochs", 100),
    "image_size": ("input_size", [512, 512]),
    "lr_schedule": ("schedule", "literal"),
    "lr_gamma": ("schedule", 0.9),
    "lr_every": ("schedule", 10),
    "warmup": ("schedule", 0.0),
    "cycles": ("schedule", 1),
    "dice_form": ("loss", "eq1"),
    "sampling": ("sampling", "uniform"),
    "coord_channel": ("preprocessing", False),
    "skip_structures": ("structures", []),
}

DEVIATIONS = {
    "lr": "the smoke and cpu profiles start at 1e-2 rather than 1e-3 so that a few hundred iterations "
          "learn the small structures too (in cpu development runs U-Net learned more at 1e-2 than at 3e-3; "
          "the development record gives the measurements); the gpu profile uses the paper's 1e-3",
    "sampling": "the smoke and cpu profiles draw batches that show every structure (foreground "
                "oversampling): with the Dice summed over the batch, a structure absent from a batch gets "
                "only a push towards zero, and the chiasm is on 2 of the phantom's 32 slices (absent from 6 "
                "of 10 uniform batches of 8). In cpu development runs of U-Net only the batches that show every "
                "structure found the chiasm and the optic nerves at all (the development record gives the "
                "measurements); the gpu profile keeps the paper's epochs over the slices",
    "iterations": "the paper trains 100 epochs (about 88,900 iterations of batch 8 on its 7112 slices); "
                  "the profiles set a budget in iterations, far smaller in the smoke and cpu profiles, so "
                  "their networks see far fewer slices than the paper's",
    "image_size": "the phantom's slices are smaller than 512 x 512; the smoke and cpu profiles train and "
                  "predict on a centred in-plane crop (whatever lies outside counts as predicted "
                  "background), the gpu profile on whole slices of the phantom's grid",
    "lr_schedule": "taken literally (x0.9 every 10 iterations) the learning rate is below 1e-8 after "
                   "1,100 iterations, so training would stop within about an epoch; the run decays "
                   "x0.9 ten times over its budget instead (the 'every 10 epochs of 100' reading)",
}
DEVIATIONS["coord_channel"] = (
    "the smoke and cpu profiles give every network each pixel's column as a second input channel (the paper "
    "feeds the CT slice alone). At cpu's budget the networks often failed to tell the left eye and optic "
    "nerve from the right ones (at 600 iterations also the mandibles and parotids), and whether they did "
    "changed with the machine: the same seed with one torch thread and with two found the eyes on their own "
    "side in one run and marked both eyes on both sides in the other. With the column channel the eyes were "
    "found on their own side in both runs, and the two runs' mean DSCs came closer (the development record "
    "gives the measurements). The gpu profile keeps the slice alone")
DEVIATIONS["iterations"] += "; gpu-lite: 3000 iterations, sized for a short GPU loan"
DEVIATIONS["skip_structures"] = (
    "the smoke and cpu profiles leave out the optic nerves and the chiasm, so their means are over 11 "
    "structures, not Table 1's 14. On the cpu grid (2 x 2 x 3.5 mm) each is a few pixels across on 2 to 5 "
    "slices (about 55 and 30 voxels per patient, against 230 for the spinal cord), and at the cpu budget they "
    "were the whole of the networks' late learning and of their disagreement between machines: in the book "
    "of 14 structures they gained far more over the second half of the budget than the other 11 "
    "structures, and a run of the same seed with two torch threads instead of one scored them differently. "
    "Without them the networks still gained a little over the second half, about as much with a larger "
    "budget (the development record gives the measurements). The gpu and gpu-lite profiles train all 14 at "
    "the phantom's full resolution")

CHOICES = {
    "seeds": "not stated: two trainings per network at cpu (seed and seed + 1), three at gpu; a claim averages "
             "each patient's scores over them first (seeds are not patients). gpu-lite trains one, sized for a "
             "short GPU loan; the claims tables give the trainings behind each verdict",
    "CT": "the phantom's non-contrast CT: the paper does not say its CT was contrast-enhanced, and it stresses "
          "the CT's poor contrast between the target and the surrounding tissue (Sec. 1)",
    "structure mapping": "locref -> GTVp, CTV2 -> CTVp, the other twelve by name (phantom names)",
    "overlapping targets": "one sigmoid output per structure (multi-label); each thresholded at 0.5",
    "CT normalisation": "clip to -200..300 HU (the book's soft-tissue window, as in xue2020 and the "
                        "leaderboard), scale to [0, 1]. Over -1000..1000 HU (this chapter's window "
                        "until 2026-11) the 5 HU between tumour and muscle are a quarter of a percent "
                        "of the input's span; the soft-tissue window makes them 1 %",
    "cross-validation unit": "patients (5 folds); slices of a patient never straddle train and test. The "
                             "paper does not say; its 7112/1777 of 8889 slices is exactly 80/20, what a "
                             "k-fold over the pooled slices gives. The split audit re-runs split_audit_methods "
                             "with slice-level folds (split_unit slice) on the same data and budget",
    "Dice term (Eq. 1)": "as printed by default (dice_form eq1): each fraction without the factor 2, "
                         "epsilon added to numerator and denominator; 'normalised' is one parameter away",
    "validation / model selection": "none: the last weights are tested (the paper kept 'the model that "
                                    "performs the best on test data', i.e. selected on the test set)",
    "optimiser, batch size": "Adam (Keras default betas), batch size from the profile",
    "learning rate": "the paper's 1e-3 in the gpu profile; 1e-2 in the smoke and cpu profiles, whose "
                     "runs are a few hundred iterations instead of the paper's tens of thousands",
    "loss constants": "beta 0.9, focal alpha 0.75 (foreground weight) and gamma 2, Dice epsilon 1e-3 "
                      "(the paper gives ranges only; see the chapter for why not 0.5 / 0.25, and for why "
                      "epsilon is small)",
    "Dice sums": "over every pixel of the batch, per structure (batch Dice, as a Keras Dice over the "
                 "batch tensor), not per slice",
    "loss of each step": "the loss is applied to both stages' outputs and averaged (deep supervision)",
    "learning-rate decay": "x0.9 ten times over the run (the 'every 10 epochs of 100' reading); the "
                           "literal 'every 10 iterations' is shown numerically and available as "
                           "lr_schedule='literal'",
    "widths": "stage 1 and U-Net share widths (doubling per level); stage 2 is three levels",
    "threads": "1 torch thread in the smoke and cpu profiles (on a shared 2-core machine a second thread "
               "spent most of its time waiting and made training steps several times slower); the "
               "torch default in the gpu profile",
    "MSP block": "stride-1 average pooling 1/3/5/7, concatenated, 1x1 conv-BN-ReLU; at the bottleneck "
                 "of each stage",
    "stage 2 input": "the image concatenated with stage 1's sigmoid probabilities; trained end to end "
                     "with stage 1 as one network (one job per method and fold)",
    "FCN-8": "VGG16-style encoder with BatchNorm, trained from scratch (no ImageNet weights offline); "
             "trained at gpu and gpu-lite only (see 'methods at cpu'); the leaderboard compares it with "
             "the two-stage network at cpu",
    "real-data track": "OpenKBP's own split: trained on real_cases of its training patients, scored on real_test "
                       "of its held-out test patients, which no development run read. The cpu budget and the "
                       "number of training patients were chosen on splits of the training patients alone: at 100 "
                       "iterations the networks had not found most organs, so the track scored only that it had "
                       "not trained; at 1500, 32 training patients instead of 16 raised both networks' DSC, Ours "
                       "more. The development record gives the measurements",
    "real-data reference": "not in the paper: beside the networks, a location prior that reads no image: per "
                           "structure, the voxel-wise mean of the masks of the patients the networks were given "
                           "(training and validation, those that have the structure; OpenKBP's scans share one "
                           "128 x 128 x 128 grid) thresholded at real_prior_threshold, scored on the same held-out "
                           "patients and slices as the networks and judged against each network per patient. A "
                           "network that does not score higher has learnt where the organs usually lie and nothing "
                           "more from the CT. The threshold is the one at which the prior best fitted the "
                           "development folds' test patients, all of them OpenKBP training patients (the "
                           "development record)",
    "methods at cpu": "Table 1's U-Net and Ours only, 3000 iterations each; FCN-8 and the two ablation networks "
                      "(two stages without MSP, one stage with MSP) train at gpu and gpu-lite. At 600 iterations "
                      "each, all four networks of the 2 x 2 ablation were unconverged, often with the eyes, "
                      "mandibles and parotids marked on both sides, so the ablation measured how fast each design "
                      "learns. The same minutes went to U-Net and Ours, first at 1000 iterations, where Ours "
                      "was still below U-Net with its spinal cord not yet found at half the budget, then at 2000, "
                      "where Ours was still learning on the development cohort (the tumour and the target volumes "
                      "most) and three times as many decays of the learning rate did not change that; hence 3000 "
                      "iterations, at which both had stopped gaining there. A cosine schedule and a higher "
                      "learning rate with a warm-up were tried at 1000 iterations and not kept. The development "
                      "record gives the measurements",
    "output initialisation": "every method's output starts at probability p = 0.01 per structure (bias "
                             "log(p / (1 - p)), weights N(0, 0.01): the focal-loss paper's prior init)",
    "augmentation": "none (the paper names none)",
    "slices predicted": "the test patient's labelled slices (the paper's slice selection); the other "
                        "slices of the written prediction are background",
    "metrics": "per patient over its labelled slices; structures absent from a patient's reference "
               "are left out of the means; DSC is the hard Dice of the 0.5-thresholded mask, the soft "
               "L2 DSC of Eq. (4) is reported beside it",
}
