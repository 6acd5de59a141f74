"""The Trainer of vrd_d2: Detectron2's DefaultTrainer with the relation-aware mapper, the relation
evaluator and total-norm gradient clipping, plus two small fixes that let it run on CPU."""
import logging
import os

import torch
import detectron2.engine.defaults as d2_defaults
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils import comm

from ..data import VRDDatasetMapper
from .schedule import resolve_schedule, stage_training_dicts
from .stage_inputs import check_stage_inputs

__all__ = ["Trainer", "SGDWithTotalNormClip", "build_vrd_optimizer"]

logger = logging.getLogger(__name__)


class SGDWithTotalNormClip(torch.optim.SGD):
    """SGD that first clips the gradient of all its parameters together to total norm ``clip_norm``
    (the paper's "clipped at 20"); detectron2 0.6's CLIP_TYPE "norm" clips each parameter alone."""

    def __init__(self, params, *, clip_norm: float, norm_type: float = 2.0, **kwargs):
        super().__init__(params, **kwargs)
        self.clip_norm, self.norm_type = float(clip_norm), float(norm_type)

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.clip_norm, self.norm_type)
        return super().step(closure)


def build_vrd_optimizer(cfg, model):
    """detectron2's build_optimizer, plus SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" = clip the
    total gradient norm of all trained parameters at CLIP_VALUE. Frozen parameters
    (requires_grad False) are not given to the optimizer."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return DefaultTrainer.build_optimizer(cfg, model)
    params = get_default_optimizer_params(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    return SGDWithTotalNormClip(params, clip_norm=clip.CLIP_VALUE, norm_type=clip.NORM_TYPE, lr=cfg.SOLVER.BASE_LR,
                                momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV,
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY)


_d2_create_ddp_model = d2_defaults.create_ddp_model


def create_ddp_model(model, **kwargs):
    """detectron2 0.6's create_ddp_model passes device_ids=[local rank], which DDP refuses for a
    CPU model: pass none there (gloo runs)."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, **kwargs)


d2_defaults.create_ddp_model = create_ddp_model  # used by DefaultTrainer.__init__
_d2_collect_env_info = d2_defaults.collect_env_info


def collect_env_info():
    """default_setup logs collect_env_info(), which asks detectron2._C for its compiler version:
    with detectron2's Python sources only (no compiled ops) that raises ImportError."""
    try:
        return _d2_collect_env_info()
    except ImportError as e:
        return f"torch {torch.__version__}; detectron2 without compiled ops ({e})"


d2_defaults.collect_env_info = collect_env_info  # used by default_setup


class Trainer(DefaultTrainer):
    """DefaultTrainer with the relation-aware mapper and evaluator. The relation stages train on
    the images that have relations (the others add nothing to loss_cp / loss_sel; their number
    is logged). Before anything is built, MODEL.WEIGHTS is checked against the model
    (:func:`check_stage_inputs`) and SOLVER.EPOCHS, when set, becomes SOLVER.MAX_ITER / STEPS
    (:func:`resolve_schedule`)."""

    def __init__(self, cfg):
        check_stage_inputs(cfg)
        super().__init__(resolve_schedule(cfg))

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = VRDDatasetMapper(cfg, True)
        if cfg.MODEL.VRD.TRAIN_STAGE == "detector":
            return build_detection_train_loader(cfg, mapper=mapper)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=stage_training_dicts(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=VRDDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from vrd_d2.evaluation import VRDEvaluator

        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return VRDEvaluator(dataset_name, mode=cfg.MODEL.VRD.MODE, output_dir=output_folder,
                            k_values=tuple(cfg.MODEL.VRD.TEST.K_PER_PAIR))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_vrd_optimizer(cfg, model)


