"""The shapes demo's config keys, added beside vrd_d2's (as PointRend adds its own)."""

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from vrd_d2.config import add_vrd_config

__all__ = ["add_shapes_demo_config", "get_shapes_cfg"]


def add_shapes_demo_config(cfg):
    """Add ``MODEL.BACKBONE_PRETRAIN`` to a config that has vrd_d2's keys; returns ``cfg``.

    ``MODEL.BACKBONE_PRETRAIN.ENABLED`` marks a stage-0 config (dense class pretraining of the
    from-scratch backbone, :mod:`vrd_d2_studies.shapes_demo.backbone_pretrain`): such a config is
    run by ``tools/pretrain_backbone.py``, and ``tools/train_net.py`` refuses it (the key is unknown
    there) instead of training a detector from it.
    """
    cfg.MODEL.BACKBONE_PRETRAIN = CN()
    cfg.MODEL.BACKBONE_PRETRAIN.ENABLED = False
    return cfg


def get_shapes_cfg():
    """detectron2's defaults with vrd_d2's and the shapes demo's keys."""
    return add_shapes_demo_config(add_vrd_config(get_cfg()))
