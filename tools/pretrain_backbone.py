#!/usr/bin/env python
"""
Stage 0 of the shapes demo: dense class pretraining of the from-scratch backbone, standing in for
the ImageNet weights the paper starts from (vrd_d2_studies/shapes_demo/backbone_pretrain.py).

    python tools/pretrain_backbone.py --config-file configs/Shapes/stage0_backbone.yaml
    python tools/train_net.py --config-file configs/Shapes/stage1_detector.yaml \
        MODEL.WEIGHTS output/Shapes/stage0_backbone/model_final.pth

Stage 0 is not a detectron2 model: it runs in one process, with neither --eval-only nor --resume.
"""

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401  (registers VGG16)
from vrd_d2_studies.shapes_demo.backbone_pretrain import run_stage0
from vrd_d2_studies.shapes_demo.config import get_shapes_cfg


def setup(args):
    cfg = get_shapes_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vrd_d2")
    return cfg


def main(args):
    """``args``: the parsed Namespace or a list of command-line arguments; returns the info dict."""
    if isinstance(args, (list, tuple)):
        args = default_argument_parser().parse_args(list(args))
    cfg = setup(args)
    return run_stage0(cfg, eval_only=args.eval_only, resume=args.resume, config_file=args.config_file)


if __name__ == "__main__":
    main(default_argument_parser().parse_args())
