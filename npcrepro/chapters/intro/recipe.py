"""The intro page reads the chapters' runs: only the common parameters."""

PROFILES = {p: {} for p in ("smoke", "cpu", "gpu", "gpu-lite")}
