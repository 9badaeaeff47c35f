"""guo2021: the cascaded 3D CNN (CSCN = BUNet coarse stage + ACDNet fine stage) and its 3D baselines."""
