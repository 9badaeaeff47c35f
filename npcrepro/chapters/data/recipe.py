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

CHOICES = {
    "raters' shared misreading": "the phantom's raters share part of their misreading of a faint edge "
                                 "(npcrepro.phantom.raters, rater_shared_mm, as large as each rater's own "
                                 "jitter): without it their consensus was the rendered tumour in all but name, "
                                 "a function of the image, and networks scored against it far above the raters' "
                                 "own agreement; with it the strongest leaderboard networks of a development "
                                 "run land just above that agreement, as the project's target asks (development "
                                 "record)",
    "infiltration along the fascial planes and the skull base": "the tumour's signal fades into its "
        "surroundings over a wider edge where it meets the fat of the parapharyngeal space and the skull "
        "base's marrow than where it meets muscle or mucosa, by a width that varies smoothly along the "
        "edge (npcrepro.phantom.scanners: INFILTRATION_SCALE, the stranding field; generator version 4), "
        "and the raters read that fade as it is painted: before, the raters saw a sharp tissue boundary "
        "wherever the tumour met a tissue unlike it, so they disagreed only where its neighbour looked "
        "alike, and a tumour invading fat or bone had the clearest edge of all, which no clinical contour "
        "has. The widths are assumed (no paper gives one); their effect on the raters' agreement is in the "
        "development record",
}
