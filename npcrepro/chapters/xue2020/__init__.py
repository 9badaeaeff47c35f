"""xue2020: DeepLabv3+ (MobileNetV2) vs U-Net for the primary-tumour GTV on planning CT.

``prepare``: case -> the chapter's target and training slices; ``methods``: the two networks
(``CHAPTER``, and ``network`` for the leaderboard); ``report``: tables, figures and the paper's
numbers beside this run's, from :class:`~npcrepro.engine.results.Results`.
"""
