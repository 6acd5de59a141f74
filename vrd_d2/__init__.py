"""vrd_d2: visual relationship detection with low-rank non-negative tensor decomposition
(Dupty, Zhang & Lee, AAAI 2020) as a Detectron2 plugin.

Importing the package registers its components: the VGG16 backbone and box head, the relation
ROI heads and meta-architecture, and the builtin datasets (cheaply: only class lists are read,
and a malformed one fails only when its dataset is loaded). The evaluator is not registered
anywhere: ``vrd_d2.engine.Trainer.build_evaluator`` builds ``vrd_d2.evaluation.VRDEvaluator``.
"""

from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers backbone, heads, meta-arch)
from .config import add_vrd_config

__all__ = ["add_vrd_config"]
