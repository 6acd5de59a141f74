"""Stage 0 of the shapes demo: dense class pretraining of the from-scratch backbone.

The paper starts from an ImageNet VGG16, whose conv5_3 map carries colour at every position. The
shapes demo has no pretrained weights and trains its narrow VGG from scratch in stage 1; that
detector learned colour at a seed-dependent iteration (559 to 879 in six runs), and one that
learned it late kept it mostly in its box head. The relation stages freeze the convs and their
predicate branch must read "same colour as" / "different colour from" off the union box's conv
features, so rank 1's recall followed the detector's seed over 7 points (an MLP probe
reads "same colour" from the pooled conv5 union feature at 0.59-0.92 across those detectors).

Stage 0 stands in for ImageNet pretraining on the demo's own training boxes: it trains the
backbone with a 1x1 conv on conv5 to classify every conv5 cell as the class of the smallest gold
box holding the cell's centre (background elsewhere, weight :data:`BACKGROUND_WEIGHT`; cells of an
object whose class cannot be seen, ``shadowed`` in the shapes json, are ignored). Stage 1 then
starts from these weights (``MODEL.WEIGHTS``, keys ``backbone.*``).

The loop is plain PyTorch over the dataset's images, all resized to one square size
(``INPUT.MIN_SIZE_TRAIN[0]``; the images must share one size) with random horizontal flips, SGD with
``SOLVER.{BASE_LR, MOMENTUM, WEIGHT_DECAY, IMS_PER_BATCH, WARMUP_ITERS (linear from 0), STEPS,
GAMMA, MAX_ITER}``, seeded by ``cfg.SEED``.
"""

import logging
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_backbone
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng
from torch import nn

from ..ablation import stage_output
from .detector_check import _shadowed_flags

__all__ = ["BACKGROUND_WEIGHT", "dense_class_targets", "pretrain_backbone", "run_stage0"]

logger = logging.getLogger(__name__)

BACKGROUND_WEIGHT = 0.1  # most cells are background: at weight 1 the map learned background only
IGNORE = -1


def dense_class_targets(
    boxes: Sequence[Sequence[float]],
    classes: Sequence[int],
    ignore: Sequence[bool],
    image_size: Tuple[int, int],
    cells: Tuple[int, int],
    num_classes: int,
) -> torch.Tensor:
    """Class of each cell of a ``cells`` = (rows, columns) grid laid over an image.

    Args:
        boxes: XYXY_ABS boxes in the image's pixels; classes: their class ids; ignore: per box,
            True when its class cannot be seen (its cells get :data:`IGNORE`).
        image_size: (height, width) of the image the boxes are in.
    Returns:
        int64 [rows, columns]: the class of the smallest box that holds the cell's centre
        (borders included), ``num_classes`` (background) when none does, :data:`IGNORE` where that
        box is ignored.
    """
    rows, cols = cells
    cy = (np.arange(rows) + 0.5) * (image_size[0] / rows)
    cx = (np.arange(cols) + 0.5) * (image_size[1] / cols)
    out = np.full((rows, cols), num_classes, np.int64)
    order = sorted(range(len(boxes)), key=lambda k: -(boxes[k][2] - boxes[k][0]) * (boxes[k][3] - boxes[k][1]))
    for k in order:  # largest first: a nested box overwrites its host
        x1, y1, x2, y2 = boxes[k]
        inside = (cx[None, :] >= x1) & (cx[None, :] <= x2) & (cy[:, None] >= y1) & (cy[:, None] <= y2)
        out[inside] = IGNORE if ignore[k] else classes[k]
    return torch.from_numpy(out)


def _images_and_targets(dataset: str, size: int, cells: int, num_classes: int):
    """(uint8 [N, 3, size, size] BGR images, int64 [N, cells, cells] targets) of ``dataset``."""
    import cv2

    dicts = DatasetCatalog.get(dataset)
    shadowed = _shadowed_flags(dataset)
    shapes = {(d["height"], d["width"]) for d in dicts}
    if len(shapes) != 1 or len(set(next(iter(shapes)))) != 1:
        raise ValueError(f"backbone_pretrain: the images of {dataset} must share one square size, found {shapes}")
    images, targets = [], []
    for d in dicts:
        image = cv2.imread(d["file_name"])
        if image is None:
            raise FileNotFoundError(f"backbone_pretrain: cannot read {d['file_name']} of {dataset}")
        images.append(
            torch.from_numpy(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)
        )
        anns = d["annotations"]
        hidden = shadowed.get(d["image_id"], [False] * len(anns))
        targets.append(
            dense_class_targets(
                [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                [a["category_id"] for a in anns],
                hidden,
                (d["height"], d["width"]),
                (cells, cells),
                num_classes,
            )
        )
    return torch.stack(images), torch.stack(targets)


def _cell_accuracy(backbone, head, feature, images, targets, mean, std, num_classes) -> float:
    """Percent of the non-background, non-ignored cells classified right."""
    backbone.eval()
    with torch.no_grad():
        pred = head(backbone((images.float() - mean) / std)[feature]).argmax(1)
    backbone.train()
    fg = (targets >= 0) & (targets < num_classes)
    return 100.0 * float((pred[fg] == targets[fg]).float().mean())


def pretrain_backbone(
    cfg, dataset: str, val_dataset: Optional[str] = None, reuse: bool = True
) -> Tuple[str, float, Dict]:
    """Train stage 0 into ``cfg.OUTPUT_DIR/model_final.pth`` ({"model": backbone.* weights}).

    Returns (weights path, seconds (0.0 when reused), {"val_cell_accuracy": percent on
    ``val_dataset``'s object cells, or None}).
    """
    final, reused = stage_output(cfg, reuse)
    if reused:
        return final, 0.0, {"val_cell_accuracy": None}
    start = time.perf_counter()
    seed_all_rng(cfg.SEED)
    rng = np.random.default_rng(cfg.SEED)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    backbone = build_backbone(cfg)
    if len(backbone.output_shape()) != 1:
        raise ValueError(
            f"backbone_pretrain: {cfg.MODEL.BACKBONE.NAME} has outputs {list(backbone.output_shape())}; "
            "stage 0 trains a backbone with one output feature map"
        )
    (feature,) = backbone.output_shape().keys()
    spec = backbone.output_shape()[feature]
    head = nn.Conv2d(spec.channels, num_classes + 1, 1)
    size = cfg.INPUT.MIN_SIZE_TRAIN[0]
    cells = size // spec.stride
    images, targets = _images_and_targets(dataset, size, cells, num_classes)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    s = cfg.SOLVER
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY)
    weight = torch.tensor([1.0] * num_classes + [BACKGROUND_WEIGHT])
    backbone.train()
    for it in range(s.MAX_ITER):
        lr = s.BASE_LR * min(1.0, (it + 1) / max(1, s.WARMUP_ITERS)) * s.GAMMA ** sum(it >= t for t in s.STEPS)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.from_numpy(rng.choice(len(images), s.IMS_PER_BATCH, replace=False))
        flip = torch.from_numpy(rng.random(s.IMS_PER_BATCH) < 0.5)
        x = (images[idx].float() - mean) / std
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        y = torch.where(flip.view(-1, 1, 1), targets[idx].flip(2), targets[idx])
        loss = nn.functional.cross_entropy(head(backbone(x)[feature]), y, ignore_index=IGNORE, weight=weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"backbone_pretrain: loss is {loss.item()} at iteration {it} ({cfg.OUTPUT_DIR})")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (it + 1) % 100 == 0 or it + 1 == s.MAX_ITER:
            logger.info(f"stage 0 iter {it + 1}/{s.MAX_ITER} loss {loss.item():.4f} lr {lr:.5f}")
    info = {"val_cell_accuracy": None}
    if val_dataset:
        vi, vt = _images_and_targets(val_dataset, size, cells, num_classes)
        info["val_cell_accuracy"] = _cell_accuracy(backbone, head, feature, vi, vt, mean, std, num_classes)
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, final)
    return final, time.perf_counter() - start, info


def run_stage0(cfg, *, eval_only: bool = False, resume: bool = False, config_file: str = "") -> Dict:
    """Stage 0 as ``tools/pretrain_backbone.py`` runs it (MODEL.BACKBONE_PRETRAIN.ENABLED): trains on
    DATASETS.TRAIN[0], reports the cell accuracy on DATASETS.TEST[0] when there is one, never
    reuses. Stage 0 is not a detectron2 model: a ValueError for --eval-only, --resume or several
    processes. Returns the info dict of :func:`pretrain_backbone`."""
    from detectron2.utils import comm

    if not cfg.MODEL.BACKBONE_PRETRAIN.ENABLED:
        raise ValueError(
            f"{config_file or 'config'}: not a stage-0 config (MODEL.BACKBONE_PRETRAIN.ENABLED is False); "
            "train it with tools/train_net.py"
        )
    if eval_only or resume or comm.get_world_size() > 1:
        raise ValueError(
            f"{config_file or 'config'}: stage 0 (MODEL.BACKBONE_PRETRAIN.ENABLED) runs in one process, "
            "without --eval-only or --resume"
        )
    val = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    path, seconds, info = pretrain_backbone(cfg, cfg.DATASETS.TRAIN[0], val, reuse=False)
    acc = info["val_cell_accuracy"]
    print(f"stage 0: {path} in {seconds:.0f} s" + (f"; {acc:.1f}% of the object cells of {val} right" if val else ""))
    return info
