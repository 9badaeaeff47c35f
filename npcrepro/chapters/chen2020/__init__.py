"""chen2020 (MMFNet, Chen et al. 2020): multi-modality MRI fusion, the rows of Tables I and II."""
