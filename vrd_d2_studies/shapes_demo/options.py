"""The demo's options and config overrides, checked before stage 0 trains (not after stages 0 and
1, when the first config that reads a bad value is built)."""

from vrd_d2.config import resolve_vrd_config
from vrd_d2.engine.schedule import check_solver
from vrd_d2.utils.checks import check_float, check_int

from .config import get_shapes_cfg
from .runner import CONFIGS, RANKS

__all__ = ["check_options"]

WHERE = "shapes_demo"


def check_options(options) -> None:
    """A ValueError naming the flag or config key for a bad ``--seeds`` (numpy seeds are in
    [0, 2^32 - 1]), ``--min-detector-accuracy`` (a percentage) or trailing override: every stage's
    config, at every rank the demo trains, is resolved as its run will be (MODEL.VRD.*, SOLVER)."""
    for seed in getattr(options, "seeds", None) or []:
        check_int(seed, "--seeds", low=0, high=2**32 - 1, where=WHERE)
    minimum = getattr(options, "min_detector_accuracy", None)
    if minimum is not None:
        check_float(minimum, "--min-detector-accuracy", low=0.0, high=100.0, where=WHERE)
    opts = list(getattr(options, "opts", None) or [])
    for stage, path in CONFIGS.items():
        for rank in RANKS:
            cfg = get_shapes_cfg()
            cfg.merge_from_file(path)
            cfg.MODEL.VRD.RANK = rank  # as runner.build_cfg: the stage's rank, then the user's overrides
            try:
                cfg.merge_from_list(opts)
            except (KeyError, ValueError, AssertionError) as e:
                raise ValueError(f"{WHERE}: bad config override in {opts}: {str(e).strip(chr(39))}") from None
            resolve_vrd_config(cfg, warn=False)
            check_solver(cfg)
