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

Weights are loaded without unpickling arbitrary objects; a .pkl (e.g. detectron2's model zoo) needs
``--trust-pickle``. ``--eval-only`` refuses a checkpoint without relation-head weights; a test set
registered without class names takes the checkpoint's, one with other names is an error. ``--resume``
continues an interrupted run exactly (weights, SGD momentum, LR schedule, data order); an empty or
corrupt ``<OUTPUT_DIR>/last_checkpoint`` is a one-line error saying what to do.

Multi-GPU: ``--num-gpus N`` (detectron2's launch, NCCL). CPU: ``--num-cpu-procs N`` spawns N gloo
processes (with ``MODEL.DEVICE cpu``).
"""

import sys

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401  (registers the datasets, VGG16, VRDROIHeads, VRDRCNN)
import vrd_d2_studies.shapes_demo  # noqa: F401  (registers the shapes datasets of configs/Shapes)
from vrd_d2.checkpoint import ResumeError, VRDCheckpointer
from vrd_d2.checkpoint_info import fill_dataset_class_names
from vrd_d2.config import add_vrd_config
from vrd_d2.engine import Trainer, check_stage_inputs, launch_cpu


def setup(args):
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vrd_d2")  # schedule, checks, datasets
    return cfg


def main(args):
    """``args``: the parsed Namespace (as launch passes it) or a list of command-line arguments."""
    if isinstance(args, (list, tuple)):
        args = get_parser().parse_args(list(args))
    cfg = setup(args)
    if args.eval_only:
        check_stage_inputs(cfg, eval_only=True)
        model = Trainer.build_model(cfg)
        extras = VRDCheckpointer(
            model,
            save_dir=cfg.OUTPUT_DIR,
            trust_pickle=getattr(args, "trust_pickle", False),
            require_relation_head=True,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        fill_dataset_class_names(cfg.DATASETS.TEST, extras, cfg.MODEL.WEIGHTS)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg, trust_pickle=getattr(args, "trust_pickle", False))
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--num-cpu-procs",
        type=int,
        default=0,
        help="number of gloo CPU processes (use with MODEL.DEVICE cpu); overrides --num-gpus",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow MODEL.WEIGHTS files that need arbitrary unpickling (.pkl): only for files "
        "from a source you trust, since unpickling can run code",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    try:
        if args.num_cpu_procs > 0:
            launch_cpu(main, args.num_cpu_procs, dist_url="auto", args=(args,))
        else:
            launch(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    except ResumeError as e:  # a one-process run: the message says what to do, a traceback would not
        sys.exit(f"train_net.py: error: {e}")
