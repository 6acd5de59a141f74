"""Pair geometry: the 2 x 64 x 64 binary spatial masks with their conv branch, and box-geometry
features for the geometry-only head.

Spatial masks follow Dai et al. (CVPR 2017), used by the paper: in the frame of the union box of
(b_s, b_o), channel 0 is 1 inside the subject box and channel 1 inside the object box.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from torch import Tensor, nn

__all__ = [
    "union_boxes",
    "spatial_masks",
    "SpatialMaskBranch",
    "box_geometry",
    "pair_geometry",
    "BOX_GEOMETRY_DIM",
    "PAIR_GEOMETRY_DIM",
]


def union_boxes(subject: Tensor, object_: Tensor) -> Tensor:
    """subject, object: Tensor[N, 4] XYXY -> Tensor[N, 4] XYXY enclosing both."""
    return torch.cat((torch.minimum(subject[:, :2], object_[:, :2]), torch.maximum(subject[:, 2:], object_[:, 2:])), 1)


def spatial_masks(subject: Tensor, object_: Tensor, size: int = 64) -> Tensor:
    """Binary masks of the two boxes in their union box, resampled to size x size.

    A cell (y, x) is set when it overlaps the box (floor/ceil of the box edges in cell units), so
    every box covers at least one cell.

    Args:
        subject, object_: Tensor[N, 4] XYXY_ABS boxes.
    Returns:
        Tensor[N, 2, size, size] of 0/1 (dtype of the boxes): channel 0 subject, 1 object.
    """
    u = union_boxes(subject, object_)
    wh = (u[:, 2:] - u[:, :2]).clamp(min=1e-6)
    grid = torch.arange(size, device=subject.device, dtype=subject.dtype)
    out = []
    for box in (subject, object_):
        rel = (box - u[:, :2].repeat(1, 2)) / wh.repeat(1, 2) * size  # [N, 4] in cell units
        lo = rel[:, :2].floor().clamp(0, size - 1)
        hi = torch.maximum(rel[:, 2:].ceil().clamp(max=size), lo + 1)
        in_x = (grid[None] >= lo[:, 0:1]) & (grid[None] < hi[:, 0:1])  # [N, size]
        in_y = (grid[None] >= lo[:, 1:2]) & (grid[None] < hi[:, 1:2])
        out.append((in_y[:, :, None] & in_x[:, None, :]).to(subject.dtype))
    return torch.stack(out, 1)


class SpatialMaskBranch(nn.Module):
    """2 x S x S masks -> len(conv_dims) stride-2 5x5 conv + ReLU -> FC + ReLU -> out_dim."""

    def __init__(self, mask_size: int = 64, conv_dims: Sequence[int] = (96, 128), out_dim: int = 512):
        super().__init__()
        layers, ch, side = [], 2, mask_size
        for i, d in enumerate(conv_dims):
            layers += [Conv2d(ch, d, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True)]
            ch, side = d, (side + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * side * side, out_dim)
        self.mask_size = mask_size
        self.out_dim = out_dim

    def forward(self, masks: Tensor) -> Tensor:
        """masks: Tensor[N, 2, S, S] -> Tensor[N, out_dim]."""
        return F.relu(self.fc(self.convs(masks).flatten(1)))


BOX_GEOMETRY_DIM = 7
PAIR_GEOMETRY_DIM = 2 * BOX_GEOMETRY_DIM + 8


def box_geometry(boxes: Tensor, image_size) -> Tensor:
    """Tensor[N, 4] XYXY_ABS, image (h, w) -> Tensor[N, 7]: normalized x1, y1, x2, y2, w, h and
    log relative area."""
    h, w = float(image_size[0]), float(image_size[1])
    scale = boxes.new_tensor([w, h, w, h])
    nb = boxes / scale
    bw = (nb[:, 2] - nb[:, 0]).clamp(min=1e-4)
    bh = (nb[:, 3] - nb[:, 1]).clamp(min=1e-4)
    return torch.cat((nb, bw[:, None], bh[:, None], (bw * bh).log()[:, None]), 1)


def pair_geometry(subject: Tensor, object_: Tensor, image_size) -> Tensor:
    """Geometry of ordered pairs: both boxes' :func:`box_geometry`, center offsets normalized by
    each box's size (both directions), log width/height ratios, IoU, and the union box's relative
    size. Tensor[N, 4] x 2 -> Tensor[N, PAIR_GEOMETRY_DIM]."""

    def cwh(b):
        wh = (b[:, 2:] - b[:, :2]).clamp(min=1e-3)
        return (b[:, :2] + b[:, 2:]) / 2, wh

    cs, ws = cwh(subject)
    co, wo = cwh(object_)
    iou = matched_pairwise_iou(Boxes(subject), Boxes(object_))  # row-wise: memory linear in pairs
    u = union_boxes(subject, object_)
    _, wu = cwh(u)
    h, w = float(image_size[0]), float(image_size[1])
    rel = torch.cat(
        (
            (co - cs) / ws,
            (cs - co) / wo,
            (wo / ws).log(),
            iou[:, None],
            (wu[:, :1] * wu[:, 1:] / (h * w)).clamp(min=1e-6).log(),
        ),
        1,
    )
    return torch.cat((box_geometry(subject, image_size), box_geometry(object_, image_size), rel), 1)
