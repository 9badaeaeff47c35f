"""The metrics chapter: two raters' real organ contours scored with every metric of the book."""

#: Organs closest to nasopharyngeal radiotherapy, in the order the chapter shows them.
NPC_ORGANS = ["Brainstem", "Spinal-Cord", "Parotid-Lt", "Parotid-Rt", "Mandible", "Optic-Nerve-Lt",
              "Optic-Nerve-Rt", "Lens-Lt", "Lens-Rt", "Cochlea-Lt", "Cochlea-Rt",
              "Submandibular-Lt", "Submandibular-Rt"]

PROFILES = {
    "smoke": dict(n_cases=1, organs=["Brainstem", "Parotid-Lt", "Lens-Lt"], tolerance_mm=2.0),
    "cpu": dict(n_cases=7, organs=list(NPC_ORGANS), tolerance_mm=2.0),
    "gpu": dict(n_cases=7, organs=[], tolerance_mm=2.0),  # [] = every organ
}
PROFILES["gpu-lite"] = dict(PROFILES["gpu"])

#: The page reads a real extract, not the phantom.
DEFAULTS = {"data": "auto"}

HELP = {
    "data": "the two-rater set (tcia-hn-oar-two-raters): 'auto' (the shared extracts' folder) or its path",
    "n_cases": "scans of the two-rater set scored",
    "organs": "organs scored ([]: every organ)",
    "tolerance_mm": "surface Dice (NSD) tolerance in mm",
}
