"""xue2020: DeepLabv3+ (MobileNetV2) vs U-Net for the primary-tumour GTV on planning CT (plain data)."""

#: CT window (HU) clipped and scaled to [0, 1]; the paper states no intensity preprocessing.
CT_WINDOW = (-200.0, 300.0)

#: GTVnd components whose centroid is closer than this to the midline (mm, left-right) are
#: retropharyngeal. The phantom places retropharyngeal nodes 14-17 mm from the midline and level
#: II/III nodes 33-44 mm from it (npcrepro.phantom.lesions); 20 mm separates them.
RP_MIDLINE_MM = 20.0

#: Pixel size (mm) at which DeepLab's ASPP rates 6/12/18 are taken as given: the paper's CT.
PAPER_PIXEL_MM = 0.98

_COMMON = dict(channel="CECT", scale_aspp=True, lr=0.005, lr_factor=0.8, lr_patience=5, dice_eps=1.0, output_stride=16,
               deeplab_width=1.0, background_fraction=0.5, flip=True, rotate_deg=10.0, zoom=[0.9, 1.1],
               shift=0.1, target="gtvp_rpn", threshold=0.5, real_data="openkbp", image_size=None,
               seeds=1, workers=1, threads=None, schedule="plateau", cycles=1, warmup=0.0, grad_clip=0.0,
               prior=None, weights="best", real_weights="best", context=0, real_context=0,
               real_prior_threshold=0.25)

PROFILES = {
    "smoke": dict(_COMMON, prior=0.01, n_cases=5, n_val=1, n_test=2, unet_widths=[8, 16, 32, 64], batch_size=4,
                  iterations=6, epochs=None, eval_every=3, infer_batch=16, timing_slices=3, real_cases=0,
                  real_test=0, real_iterations=0, real_image_size=None),
    # cpu: 20 test patients (was 5; inference is cheap next to training, and 5 patients decide nothing:
    # the smallest Wilcoxon p is 1/16), 15 training and 5 validation patients; 720 iterations, the
    # budget at which DeepLabv3+ stopped gaining over its second half. Measurements:
    # npcrepro/chapters/xue2020/development.json.
    "cpu": dict(_COMMON, schedule="cosine", warmup=0.1, cycles=2, grad_clip=1.0, lr=0.003, prior=0.01,
                n_cases=40, n_val=5, n_test=20, unet_widths=[16, 32, 64, 128, 256], batch_size=8,
                iterations=720, epochs=None, eval_every=20, infer_batch=16, timing_slices=20, real_cases=48,
                real_test=16, real_iterations=1200, real_image_size=[80, 80], seeds=2,
                real_weights="last", real_context=1),
    "gpu": dict(_COMMON, n_cases=150, n_val=15, n_test=15, unet_widths=[64, 128, 256, 512, 1024],
                batch_size=8, iterations=None, epochs=200, eval_every=None, infer_batch=32, timing_slices=100,
                real_cases=64, real_test=16, real_iterations=None, real_image_size=None, seeds=3),
}

#: gpu-lite: both networks at the paper's widths on whole 512 x 512 slices, fewer patients and a
#: budget of thousands of iterations, so the cpu profile's schedule (see DEVIATIONS["lr"]) and the
#: OpenKBP track's weights and neighbouring slices that go with it (CHOICES["model selection"],
#: DEVIATIONS["real_context"]); the two
#: networks train side by side on the one GPU (workers=2), a chapter within 8 minutes of an H100.
PROFILES["gpu-lite"] = dict(PROFILES["gpu"], n_cases=40, n_val=5, n_test=10, epochs=None, iterations=3000,
                            eval_every=250, real_cases=16, real_iterations=2000, workers=2, seeds=1,
                            **{k: PROFILES["cpu"][k] for k in ("schedule", "warmup", "cycles", "grad_clip", "lr",
                                                               "prior", "real_weights", "real_context")})

HELP = {
    "channel": "the CT the networks train on: CECT (contrast-enhanced, venous phase: the paper's simulation CT) "
               "or CT (non-contrast)",
    "n_val": "validation patients (plateau rule and best-validation weights); scaled down with fewer cases",
    "n_test": "test patients of the seeded random split; scaled down with fewer cases",
    "target": "training target: gtvp_rpn (GTVp + retropharyngeal nodes, the paper's), gtvp, gtvp_gtvnd, ptv70",
    "unet_widths": "U-Net channels per level (the paper does not state them)",
    "output_stride": "DeepLabv3+ output stride (8, 16 or 32)",
    "prior": "initial foreground probability of both networks' output layer (None: the layer's default "
             "initialisation)",
    "deeplab_width": "MobileNetV2 width multiplier",
    "scale_aspp": "scale the ASPP rates 6/12/18 by 0.98 mm / the data's pixel size",
    "iterations": "training iterations per model (smoke/cpu); None trains `epochs` epochs",
    "epochs": "training epochs per model (passes over the training slices) when iterations is None",
    "eval_every": "iterations between validation losses (None: once per epoch)",
    "lr": "Adam learning rate (the peak, after any warm-up)",
    "schedule": "learning-rate schedule: plateau (the paper's rule, lr_factor and lr_patience) or cosine/poly "
                "decay to zero at the end of the budget",
    "warmup": "share of the budget (of each cycle) spent ramping the learning rate linearly up from 0",
    "cycles": "cosine/poly: warm restarts, the schedule runs this many times over the budget",
    "grad_clip": "gradient-norm clipping (0: off)",
    "lr_factor": "learning-rate factor of the plateau rule",
    "lr_patience": "validations without improvement of the validation loss before a cut",
    "dice_eps": "smoothing of the soft-Dice loss 1 - DSC (voxels)",
    "background_fraction": "slices without tumour added per slice with tumour (training and validation)",
    "flip": "random left-right flip, probability 0.5",
    "rotate_deg": "random rotation range (degrees, +-)",
    "zoom": "random zoom range [low, high]",
    "shift": "random translation range (fraction of the slice, +-)",
    "image_size": "centre crop/pad (y, x) of every slice for training and inference; None: whole slices",
    "timing_slices": "timed forward passes for the inference time per slice",
    "real_data": "the real-data track: openkbp (OpenKBP planning CT, PTV70 stand-in) or off",
    "real_cases": "OpenKBP training patients (train-pats) of the real-data track (fewer than 3: off)",
    "real_test": "OpenKBP held-out test patients (test-pats) the real-data track is scored on (0: a split of "
                 "the training patients instead)",
    "real_iterations": "training iterations per model of the real-data track (None: `epochs`)",
    "real_image_size": "in-plane centre crop (y, x) of the real-data track; None: whole slices",
    "weights": "the weights tested: best (lowest validation loss) or last (the end of training)",
    "real_weights": "the weights the real-data track tests: best (lowest validation loss) or last",
    "context": "neighbouring slices on each side given to the networks as extra input channels (0: one slice, "
               "the paper's 2D input)",
    "real_context": "`context` of the real-data track",
    "real_prior_threshold": "real-data track: the reference that reads no image (the voxel-wise mean of the "
                            "training and validation patients' PTV70 masks) predicts where the mean is at least this",
}

ALLOWED = {"channel": ["CECT", "CT"], "target": ["gtvp_rpn", "gtvp", "gtvp_gtvnd", "ptv70"], "real_data": ["openkbp", "off"],
           "schedule": ["plateau", "cosine", "poly"],
           "output_stride": [8, 16, 32], "weights": ["best", "last"], "real_weights": ["best", "last"]}

PAPER = {
    "channel": ("image", "CECT"),   # Sec. 1.1: contrast-enhanced simulation CT
    "lr": ("lr", 0.005),
    "lr_factor": ("schedule", 0.8),
    "lr_patience": ("schedule", 5),
    "batch_size": ("batch_size", 8),
    "epochs": ("epochs", 200),
    "image_size": ("input_size", [512, 512]),
    "schedule": ("schedule", "plateau"),
    "warmup": ("schedule", 0.0),
    "cycles": ("schedule", 1),
    "grad_clip": ("optimizer", 0.0),
    "context": ("input", 0),        # one CT image: no neighbouring slices
    "real_context": ("input", 0),
}

DEVIATIONS = {
    "batch_size": "the smoke profile (a test that the chapter runs, seconds) trains batches of 4 slices; "
                  "cpu and gpu use the paper's 8",
    "epochs": "smoke and cpu train a fixed number of iterations per model (`iterations`) so that the "
              "chapter runs in minutes on two cores, and check the plateau rule every `eval_every` "
              "iterations instead of every epoch, so the learning-rate cuts come at other points; a few "
              "hundred iterations at the paper's learning rate sit on a knife edge (whether a network "
              "trains at all can depend on the seed or the floating-point summation order), so one run "
              "is one draw. The gpu profile trains the paper's 200 epochs",
    "lr": "at the cpu budget (a few hundred iterations) the paper's recipe, Adam at 5e-3 on 1 - DSC with the "
          "plateau rule, sat on a knife edge: whether DeepLabv3+ trained at all differed between two machines "
          "with the same code and seed. The cpu profile adds the standard tools of fast, robust convergence: "
          "a linear warm-up over the first tenth of the budget, a cosine decay to zero at its end, "
          "gradient-norm clipping at 1 and a peak learning rate of 3e-3, the schedule run twice over the "
          "budget (see cycles); the gpu profile keeps the paper's recipe, and gpu-lite, whose budget (3000 "
          "iterations) is also far below the paper's 200 epochs, takes the cpu profile's. The peak rate and "
          "cycles were chosen among those tried in development runs (2e-3 and 3e-3, and the paper's 5e-3 on "
          "two seeds, with one or two cycles); at 240 and again at 480 iterations DeepLabv3+ was still "
          "learning (at 480, on the development cohort at phantom version 3, it gained more over the second "
          "half than the convergence flag allows), so the cpu budget is 720 iterations. The development "
          "record gives the measurements",
    "schedule": "see lr: cosine decay at cpu and gpu-lite, the paper's plateau rule at gpu",
    "warmup": "see lr: 10 % of each cycle at cpu and gpu-lite, none at gpu",
    "cycles": "cpu and gpu-lite: the warm-up and cosine decay run twice over the budget (a warm restart at its middle), so "
              "the network scored at half its budget has finished a whole schedule and the convergence flag "
              "compares two finished trainings; gpu: the paper's plateau rule, one run",
    "grad_clip": "see lr: clipped at 1 at cpu and gpu-lite, not at gpu",
    "image_size": "whole slices of the data's grid are used (no resizing): the gpu phantom renders the "
                  "paper's 512 x 512 slices, cpu and smoke coarser and smaller grids; the real-data track "
                  "crops OpenKBP slices to `real_image_size` on the cpu profile",
}
DEVIATIONS["epochs"] += "; gpu-lite: 3000 iterations on 40 patients, sized for a short GPU loan"
DEVIATIONS["real_context"] = ("the OpenKBP track at cpu and gpu-lite gives the networks each slice with one "
                              "neighbour above and one below as three input channels (2.5D; the paper's input is "
                              "one slice). PTV70 is a volume drawn over many slices, and on splits of OpenKBP's "
                              "training patients the neighbours helped U-Net and did not hurt DeepLabv3+ (the "
                              "development record). The phantom chapter reads one slice, as the paper's networks do")

CHOICES = {
    "seeds": "not stated: two trainings per network at cpu (seed and seed + 1), three at gpu; a claim averages "
             "each patient's scores over them first (seeds are not patients). gpu-lite trains one, sized for a "
             "short GPU loan; the claims tables give the trainings behind each verdict",
    "CT": "the phantom's contrast-enhanced CT (CECT, venous phase) as in the paper (Sec. 1.1: a contrast-"
          "enhanced simulation CT); channel='CT' trains on the non-contrast CT instead. The OpenKBP track "
          "uses the one CT its scans have",
    "target": "GTVp united with the retropharyngeal part of GTVnd (components within 20 mm of the "
              "midline); the phantom has no separate retropharyngeal label; target='gtvp', 'gtvp_gtvnd' "
              "and 'ptv70' (OpenKBP) are the alternatives",
    "output initialisation": "the paper states none. gpu: the layers' default (the output starts near "
                             "probability 0.5); smoke, cpu and gpu-lite: both networks' output layer starts at "
                             "probability 0.01 (bias logit(0.01), weights N(0, 0.01), as chen2020's "
                             "networks), added at cpu with the warm-up and cosine decay (see lr). With the "
                             "default, DeepLabv3+ sat on the Dice loss's plateau for half the cpu budget; "
                             "with the prior it left the plateau early (the development record gives the "
                             "measurements)",
    "weight initialisation": "the paper states none (nor ImageNet weights): He normal (fan-out) for every "
                             "convolution, and in DeepLabv3+ the BatchNorm closing each of the 10 inverted "
                             "residual blocks with a shortcut starts at scale 0, so each block starts as its "
                             "shortcut (zero-gamma, Goyal et al. 2017; models.blocks.zero_init_residuals), at "
                             "every profile. Trained from scratch, the 17-block encoder otherwise learned slowly, in "
                             "this chapter and in the leaderboard (the development record gives the "
                             "measurements)",
    "CT normalisation": "clip to [-200, 300] HU (soft-tissue window), scale to [0, 1]; the same window for "
                        "CECT and CT",
    "slices used": "all slices with tumour plus background_fraction (default 0.5) as many without, for "
                   "training and validation; every slice at test time",
    "augmentation ranges": "left-right flip p=0.5, rotation U(-10, 10) deg, zoom U(0.9, 1.1), translation "
                           "U(-10, 10) % of the slice, one bilinear resampling",
    "loss 1 - DSC": "soft Dice of sigmoid probabilities pooled over the batch (the usual Keras dice_coef "
                    "on flattened tensors), smoothing 1 voxel",
    "plateau rule": "lr x0.8 when the validation loss has not improved for 5 evaluations (Keras "
                    "ReduceLROnPlateau monitors val_loss by default; the paper says 'training metric')",
    "evaluation frequency": "once per epoch (gpu profile) or every eval_every iterations (cpu/smoke)",
    "model selection": "the weights with the lowest validation loss are tested (weights='best'). On the cpu "
                       "and gpu-lite profiles the OpenKBP track tests the weights at the end of training "
                       "(real_weights='last'): it validates on 5 patients, whose best-validation weights were "
                       "no better a pick than the last ones, and the cosine schedule already ends at a learning "
                       "rate of zero; chosen on splits of OpenKBP's training patients (the development "
                       "record). The gpu profile, whose plateau rule does not end at zero, keeps the "
                       "best-validation weights there too",
    "post-processing": "none: the 0.5-thresholded slice predictions are stacked into the volume",
    "U-Net": "the plain U-Net of the project (conv-BN-ReLU, transposed-conv upsampling); widths from the "
             "profile (gpu: 64-1024, Ronneberger et al.)",
    "DeepLabv3+": "MobileNetV2 width 1.0, output stride 16, ASPP 6/12/18 with 256 channels, 48-channel "
                  "low-level reduction, separable 3x3 convs in ASPP and decoder (see the architecture table)",
    "ASPP rates": "6/12/18 scaled by 0.98 mm / the data's pixel size (scale_aspp=True): each branch covers "
                  "the same physical context as at the paper's 0.98 mm (cpu phantom, 2 mm pixels: 3/6/9; "
                  "unscaled, the rate-12 and rate-18 branches would see mostly padding on an 8 x 8 feature "
                  "map); at 0.98 mm they are 6/12/18",
    "real-data track": "OpenKBP planning CT, PTV70 as the stand-in target, in-plane centre crop "
                       "(real_image_size) on the cpu profile; its own run folder. OpenKBP's own split: trained "
                       "on real_cases of its training patients, scored on real_test of its held-out test "
                       "patients, which no development run read. The cpu budget, the training patients (all 48 "
                       "of the extract's), the weights tested and the neighbouring slices read (real_context) "
                       "were chosen on splits of the training patients (the development record). On those "
                       "splits the track stays below the CT bar, and little above a location prior that reads "
                       "no image (see real-data reference); twice the budget lifted it little, at twice the time",
    "real-data reference": "not in the paper: beside the networks, a location prior that reads no image, the "
                           "voxel-wise mean of the PTV70 masks of the patients the networks were given (training "
                           "and validation; OpenKBP's scans share one 128 x 128 x 128 grid) thresholded at "
                           "real_prior_threshold, scored on the same held-out patients and judged against each "
                           "network per patient. A network that does not score higher has learnt where PTV70 "
                           "usually lies and nothing more from the CT. The threshold is the one at which the "
                           "prior best fitted the training patients' own masks on the development folds (the "
                           "development record)",
    "distances": "3D, in mm on the CT grid; HD is the maximum (100th percentile), ASD the mean of the two "
                 "directed average surface distances (the paper's Eq. 3)",
}

#: The DeepLabv3+ design choices: (item, paper says, here, public reference implementations).
REFERENCE_CHOICES = [
    ("backbone", "'improved' MobileNetV2, 4 kinds of inverted residual block, output channels 24-320",
     "MobileNetV2 width 1.0: stem 32, stages 16-24-32-64-96-160-320 (the 1280 tail dropped)",
     "same channels in TF deeplab, Keras keras-deeplab-v3-plus, PyTorch ports"),
    ("output stride", "not stated", "16",
     "TF and Keras: 8 or 16; PyTorch ports: 16 (8 optional); mmsegmentation MobileNetV2 configs: 8"),
    ("dilated stages", "atrous convolution in the backbone",
     "stride-16 stages dilated; the first block of a dilated stage keeps the previous rate",
     "TF slim MobileNetV2: same rule; mmsegmentation: whole stage at the new rate"),
    ("ASPP rates", "'atrous spatial pyramid'", "6, 12, 18 (doubled at OS 8) + 1x1 + image pooling",
     "6/12/18 at OS 16; the published TF/Keras MobileNetV2 checkpoints use only 1x1 + image pooling"),
    ("ASPP / decoder channels", "not stated", "256 / 256", "256 everywhere"),
    ("low-level features", "1x1 conv reduces channels; stride-4 features", "24-channel stage -> 48",
     "48 everywhere"),
    ("separable convs", "atrous + depthwise separable in encoder and decoder",
     "ASPP and decoder 3x3 convs depthwise-separable", "DeepLabv3+ paper: yes; PyTorch ports: plain 3x3"),
    ("decoder", "x4 bilinear, concat, 3x3 convs, x4 bilinear", "same (two 3x3 convs)",
     "published TF/Keras MobileNetV2 checkpoints: no decoder; PyTorch ports, mmsegmentation: as here"),
]

#: Types of the parameters that are None at every profile.
TYPES = {"image_size": "list", "threads": "int"}
