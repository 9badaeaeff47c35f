"""npcrepro: reproducing five deep-learning papers on nasopharyngeal carcinoma segmentation.

Arrays are (z, y, x) and spacings (z, y, x) in mm everywhere after :mod:`npcrepro.io`.
"""
from npcrepro.errors import DataError, NpcreproError, ParameterError

__version__ = "0.1.0"
__all__ = ["DataError", "NpcreproError", "ParameterError", "__version__"]
