#!/usr/bin/env python
"""
Train or evaluate a vrd_d2 model: detectron2's tools/train_net.py with the relation mapper, the
relation evaluator and total-norm gradient clipping.

    # stage 1 (detector), 2 (triplet net), 3 (selection head), each from the previous stage:
    python tools/train_net.py --config-file configs/VRD/stage1_detector.yaml
    python tools/train_net.py --config-file configs/VRD/stage2_triplet.yaml \
        MODEL.WEIGHTS output/VRD/stage1_detector/model_final.pth
    python tools/train_net.py --config-file configs/VRD/stage3_selection.yaml \
        MODEL.WEIGHTS output/VRD/stage2_triplet/model_final.pth
    python tools/train_net.py --config-file configs/VRD/stage3_selection.yaml --eval-only \
        MODEL.WEIGHTS output/VRD/stage3_selection/model_final.pth MODEL.VRD.MODE phrase_cls

Multi-GPU: ``--num-gpus N`` (detectron2's launch, NCCL). CPU: ``--num-cpu-procs N`` spawns N gloo
processes (with ``MODEL.DEVICE cpu``).
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import detectron2.engine.defaults as d2_defaults
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils import comm

import vrd_d2  # noqa: F401
import vrd_d2.modeling  # noqa: F401  (registers VGG16, VRDROIHeads, VRDRCNN)
from vrd_d2.config import add_vrd_config
from vrd_d2.data import VRDDatasetMapper


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
    """DefaultTrainer with the relation-aware mapper and evaluator."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=VRDDatasetMapper(cfg, True))

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


def setup(args):
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


# ---------------------------------------------------------------------------------- CPU launch
def _cpu_worker(local_rank, main_func, world_size, dist_url, args, timeout):
    """detectron2.engine.launch._distributed_worker for CPU: gloo, no cuda.set_device."""
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=local_rank,
                            timeout=timeout)
    assert comm._LOCAL_PROCESS_GROUP is None
    comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    comm.synchronize()
    main_func(*args)


def launch_cpu(main_func, num_procs: int, dist_url: str = "auto", args=(), timeout=timedelta(minutes=30)):
    """Run ``main_func(*args)`` in ``num_procs`` gloo processes on this machine (1: in-process)."""
    if num_procs <= 1:
        return main_func(*args)
    if dist_url == "auto":
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_cpu_worker, nprocs=num_procs, args=(main_func, num_procs, dist_url, args, timeout), daemon=False)


def get_parser():
    parser = default_argument_parser()
    parser.add_argument("--num-cpu-procs", type=int, default=0,
                        help="number of gloo CPU processes (use with MODEL.DEVICE cpu); overrides --num-gpus")
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    if args.num_cpu_procs > 0:
        launch_cpu(main, args.num_cpu_procs, dist_url="auto", args=(args,))
    else:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
