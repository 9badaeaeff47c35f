"""The real-data chapter: OpenKBP patients converted, T2 slices shown, cases in the CT gallery."""

PROFILES = {
    "smoke": dict(n_openkbp=2, n_slices=6, n_gallery=2),
    "cpu": dict(n_openkbp=12, n_slices=25, n_gallery=8),
    "gpu": dict(n_openkbp=64, n_slices=25, n_gallery=12),
}
PROFILES["gpu-lite"] = dict(PROFILES["gpu"])

#: The page reads the real extracts, not the phantom.
DEFAULTS = {"data": "auto"}

HELP = {
    "data": "the folder holding the real extracts: 'auto' ($NPCREPRO_SHARED_DATA or ../shared/data) or a path",
    "n_openkbp": "OpenKBP patients converted",
    "n_slices": "NPC T2 slices shown",
    "n_gallery": "cases in the CT gallery",
}
