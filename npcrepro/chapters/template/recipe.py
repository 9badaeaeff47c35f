"""The template chapter: a plain 2D U-Net on one channel (no paper, so no PAPER values)."""

_COMMON = dict(structure="GTVp", n_val=1, threshold=0.5, seeds=1, workers=1, threads=None)

#: cpu: a half-width U-Net (8-64 channels) for 4800 iterations, its weights picked on 4 validation patients: at
#: 1200 (what the 16-128 one cost for 600) and at 2400 it was still learning, and one validation patient picked
#: weights by noise (measurements: the development record, npcrepro/chapters/template/development.json).
PROFILES = {
    "smoke": dict(_COMMON, n_cases=4, n_test=1, channel="T1", widths=[8, 16, 32], batch_size=8,
                  iterations=40, eval_every=20, lr=1e-2, image_size=None),
    "cpu": dict(_COMMON, n_cases=40, n_test=20, n_val=4, channel="T1", widths=[8, 16, 32, 64], batch_size=8,
                iterations=4800, eval_every=200, lr=2e-3, image_size=[64, 64]),
    "gpu": dict(_COMMON, n_cases=40, n_test=8, channel="T1", widths=[32, 64, 128, 256, 512],
                batch_size=16, iterations=5000, eval_every=250, lr=1e-3, image_size=None),
}

#: gpu-lite: the gpu network on the gpu phantom, fewer patients and iterations (a short GPU loan).
PROFILES["gpu-lite"] = dict(PROFILES["gpu"], n_cases=16, n_test=4, iterations=2000, eval_every=250)

HELP = {
    "n_test": "test patients of the seeded hold-out split",
    "n_val": "validation patients (best-validation weights are kept)",
    "channel": "input image channel",
    "structure": "target structure",
    "widths": "U-Net channels per level",
    "iterations": "training iterations",
    "eval_every": "iterations between validation losses",
    "lr": "Adam learning rate (halved every quarter of the budget)",
    "image_size": "random training crop (y, x) in voxels; None trains on whole slices",
}

ALLOWED = {"channel": ["CT", "T1", "T2", "CET1"]}

CHOICES = {
    "loss": "soft Dice (eps 1) + binary cross-entropy",
    "sampling": "every slice with tumour plus 30 % as many without; flips, rotations within 10 deg, "
                "intensity jitter 0.1",
    "schedule": "learning rate halved every quarter of the budget",
}

#: Types of the parameters that are None at every profile.
TYPES = {"threads": "int"}
