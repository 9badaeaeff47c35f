"""The explorer page: which run and case it shows first (it trains nothing)."""

PROFILES = {p: {"run": "", "case": ""} for p in ("smoke", "cpu", "gpu", "gpu-lite")}

HELP = {
    "run": "run folder or chapter to show (empty: the newest leaderboard run, else the newest with predictions)",
    "case": "case to show first (empty: the run's best case)",
}
