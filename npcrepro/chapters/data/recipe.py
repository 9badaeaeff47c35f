"""The phantom page renders a cohort and measures it: which preset, how many patients, how many it shows."""

#: The phantom preset (:data:`npcrepro.phantom.PRESETS`) each profile renders, as the chapters' phantom
#: at that profile (gpu-lite: the gpu grid, :data:`npcrepro.profiles.PHANTOM_PRESETS`).
PROFILES = {
    "smoke": dict(phantom_preset="smoke", n_cases=3, n_show=2),
    "cpu": dict(phantom_preset="cpu", n_cases=20, n_show=3),
    "gpu": dict(phantom_preset="gpu", n_cases=40, n_show=3),
    "gpu-lite": dict(phantom_preset="gpu", n_cases=20, n_show=3),
}

ALLOWED = {"phantom_preset": ["smoke", "cpu", "gpu"]}

HELP = {
    "phantom_preset": "the phantom's grid and noise preset rendered on this page",
    "n_cases": "patients of the cohort measured on this page (the first n; the chapters' cache where it exists)",
    "n_show": "patients shown in the galleries",
}
