"""The Trainer of vrd_d2: Detectron2's DefaultTrainer with the relation-aware mapper, the relation
evaluator and total-norm gradient clipping, plus two small fixes that let it run on CPU, safe
checkpoint loading (VRDCheckpointer) and exact resume (optimizer state and data stream)."""

import logging
import os
import weakref

import detectron2.engine.defaults as d2_defaults
import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm

from ..checkpoint import VRDCheckpointer
from ..checkpoint_info import checkpoint_info
from ..config import resolve_vrd_config
from ..data import ResumableTrainingSampler, VRDDatasetMapper, find_resumable_sampler, triplet_counts_from_config
from ..evaluation.vrd_evaluation import print_csv_format
from .schedule import check_solver, resolve_schedule, stage_training_dicts
from .stage_inputs import check_evaluation_mode, check_stage_inputs

__all__ = ["Trainer", "SGDWithTotalNormClip", "AdamWithTotalNormClip", "build_vrd_optimizer"]

logger = logging.getLogger(__name__)


class _TotalNormClip:
    """Optimizer mixin: before each step, clip the gradient of all parameters together to total
    norm ``clip_norm`` (the paper's "clipped at 20"); detectron2 0.6's CLIP_TYPE "norm" clips each
    parameter alone."""

    def __init__(self, params, *, clip_norm: float, norm_type: float = 2.0, **kwargs):
        super().__init__(params, **kwargs)
        self.clip_norm, self.norm_type = float(clip_norm), float(norm_type)

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.clip_norm, self.norm_type)
        return super().step(closure)


class SGDWithTotalNormClip(_TotalNormClip, torch.optim.SGD):
    """SGD after total-norm clipping (the paper's optimizer)."""


class AdamWithTotalNormClip(_TotalNormClip, torch.optim.Adam):
    """Adam after total-norm clipping (SOLVER.OPTIMIZER "ADAM")."""


def build_vrd_optimizer(cfg, model):
    """The optimizer of SOLVER.OPTIMIZER ("SGD": detectron2's build_optimizer; "ADAM": Adam with
    the same parameter groups, learning rates and weight decay), with SOLVER.CLIP_GRADIENTS;
    CLIP_TYPE "full_model" clips the total gradient norm of all trained parameters at CLIP_VALUE.
    Frozen parameters (requires_grad False) are not given to the optimizer."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model"
    adam = cfg.SOLVER.OPTIMIZER == "ADAM"
    if not (full_model or adam):
        return DefaultTrainer.build_optimizer(cfg, model)
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    if adam:
        kwargs = {"lr": cfg.SOLVER.BASE_LR, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
        if full_model:
            return AdamWithTotalNormClip(params, clip_norm=clip.CLIP_VALUE, norm_type=clip.NORM_TYPE, **kwargs)
        return maybe_add_gradient_clipping(cfg, torch.optim.Adam)(params, **kwargs)
    return SGDWithTotalNormClip(
        params,
        clip_norm=clip.CLIP_VALUE,
        norm_type=clip.NORM_TYPE,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


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
# DefaultTrainer.test prints each evaluator's results with it; detectron2's fails on the
# protocol -> task -> metric results of MODEL.VRD.TEST.PROTOCOL "both"
d2_defaults.print_csv_format = print_csv_format


def _relation_heads(model):
    """The relation ROI heads of ``model`` (under DDP's ``module``), or None for a model without
    a triplet prior."""
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    return heads if hasattr(heads, "set_triplet_counts") else None


class Trainer(DefaultTrainer):
    """DefaultTrainer with the relation-aware mapper and evaluator. The relation stages train on
    the images that have relations (the others add nothing to loss_cp / loss_sel; their number
    is logged). Before anything is built, MODEL.VRD is resolved (:func:`resolve_vrd_config`: a bad
    value fails first), MODEL.WEIGHTS is checked against the model (:func:`check_stage_inputs`)
    and SOLVER.EPOCHS, when set, becomes SOLVER.MAX_ITER / STEPS (:func:`resolve_schedule`). The
    model's prior psi_u counts DATASETS.TRAIN[0] (:meth:`build_model`).

    Checkpoints are read by :class:`VRDCheckpointer` (no untrusted pickle; relation-head shape
    mismatches are errors) and hold, besides the weights and the LR scheduler (detectron2's
    LRScheduler hook), the optimizer state (SGD momentum; detectron2 0.6's DefaultTrainer leaves
    it out), the data sampler's seed, and what lets the weights stand alone: the class and
    predicate names and the config (:func:`~vrd_d2.checkpoint_info.checkpoint_info`).
    ``resume_or_load(resume=True)`` restores the weights, the optimizer state and the sampler's seed
    and continues the sampler's stream, so the batches, weights, momentum and learning rate of a
    resumed run follow an uninterrupted run (batches exactly when one aspect-ratio group holds
    every image or DATALOADER.ASPECT_RATIO_GROUPING is off: images buffered in a group are lost).
    Random draws after the resume (augmentation, null-pair sampling) come from the stream seeded by
    ``SEED``, not the interrupted one's.
    """

    def __init__(self, cfg, *, trust_pickle: bool = False):
        """``trust_pickle``: let MODEL.WEIGHTS be a pickle (.pkl), see VRDCheckpointer."""
        self.trust_pickle = trust_pickle
        cfg = resolve_vrd_config(cfg)
        check_solver(cfg)
        check_stage_inputs(cfg)
        super().__init__(resolve_schedule(cfg))

    def build_hooks(self):
        # detectron2 0.6 builds its DetectionCheckpointer inline in __init__; swap ours in before
        # the PeriodicCheckpointer hook takes it.
        model = self._trainer.model
        self.checkpointer = VRDCheckpointer(
            model,
            self.cfg.OUTPUT_DIR,
            trust_pickle=self.trust_pickle,
            info=checkpoint_info(self.cfg),
            trainer=weakref.proxy(self),
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        self._use_training_set_counts()
        sampler = find_resumable_sampler(self._trainer.data_loader)
        if sampler is not None and self.start_iter > 0:
            sampler.start = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            if hasattr(self._trainer, "_data_loader_iter"):  # 0.6 made it eagerly: workers may hold the old start
                self._trainer._data_loader_iter = iter(self._trainer.data_loader)
            logger.info(f"Resuming the data stream after {sampler.start} images per process")

    def _use_training_set_counts(self) -> None:
        """psi_u is the triplet counts of this run's training set (DATASETS.TRAIN[0]). MODEL.WEIGHTS
        from a run on another split of the same label space (a fine-tuning, a subset) carries that
        split's counts, which loading would otherwise keep. (Evaluation keeps a checkpoint's.)"""
        heads = _relation_heads(self._trainer.model)
        counts = triplet_counts_from_config(self.cfg) if heads is not None else None
        if counts is None:
            return
        loaded = heads.triplet_counts.detach().cpu()
        if not torch.equal(loaded, counts):
            logger.info(
                f"triplet prior: the loaded weights carried counts of {int(loaded.sum())} relations; "
                f"psi_u now counts the {int(counts.sum())} of {self.cfg.DATASETS.TRAIN[0]} (this run's training set)"
            )
            heads.set_triplet_counts(counts)

    def state_dict(self):
        ret = super().state_dict()
        ret["optimizer_trainer"] = self._trainer.state_dict()  # SimpleTrainer's: the optimizer state
        sampler = find_resumable_sampler(self._trainer.data_loader)
        if sampler is not None:
            ret["sampler"] = sampler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "optimizer_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["optimizer_trainer"])
        else:
            logger.warning(
                "The checkpoint holds no optimizer state (saved by detectron2's DefaultTrainer): "
                "SGD momentum restarts from zero"
            )
        sampler = find_resumable_sampler(self._trainer.data_loader)
        if sampler is not None and "sampler" in state_dict:
            sampler.load_state_dict(state_dict["sampler"])

    @classmethod
    def build_model(cls, cfg):
        """DefaultTrainer's model, its prior psi_u given the counts of DATASETS.TRAIN[0] (with
        MODEL.VRD.USE_PRIOR): training, and evaluation before a checkpoint without counts, use them."""
        model = super().build_model(cfg)
        heads = _relation_heads(model)
        counts = triplet_counts_from_config(cfg) if heads is not None else None
        if counts is not None:
            heads.set_triplet_counts(counts)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = VRDDatasetMapper(cfg, True)
        dicts = stage_training_dicts(cfg)
        # other samplers (RepeatFactorTrainingSampler) are detectron2's, without the resumable stream
        sampler = ResumableTrainingSampler(len(dicts)) if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler" else None
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=VRDDatasetMapper(cfg, False))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test, after :func:`check_evaluation_mode` (before any image is run)."""
        check_evaluation_mode(cfg)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from vrd_d2.evaluation import VRDEvaluator

        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # from the config (VRDEvaluator.from_config): mode, k per pair, protocol, SGB zero-shot list
        return VRDEvaluator(cfg, dataset_name, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_vrd_optimizer(cfg, model)
