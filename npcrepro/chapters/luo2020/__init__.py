"""luo2020: the two-stage U-Net with MSP for 14 structures on nasopharyngeal CT, its baselines
(U-Net, FCN-8s) and the two ablations its claims call for."""
