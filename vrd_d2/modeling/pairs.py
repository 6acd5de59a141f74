"""Which box pairs the relation head scores, and their training targets.

Boxes of an image are a list (gold boxes, detected boxes or proposals); each box may carry the
index of the gold box it stands for (``gt_index``, -1 for none). Pairs are ordered (subject,
object) index pairs into that list, i != j.
"""

import logging
from typing import Optional, Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor

__all__ = ["all_ordered_pairs", "cap_pairs", "match_proposals_to_gt", "pair_triplets"]

logger = logging.getLogger(__name__)


def all_ordered_pairs(n: int, device=None) -> Tensor:
    """LongTensor[n (n - 1), 2] of all (i, j), i != j, in row-major order."""
    idx = torch.arange(n, device=device)
    i, j = torch.meshgrid(idx, idx, indexing="ij")
    keep = i != j
    return torch.stack((i[keep], j[keep]), 1)


def cap_pairs(pairs: Tensor, max_pairs: int, priority: Optional[Tensor] = None, what: str = "") -> Tensor:
    """Keep at most ``max_pairs`` rows of ``pairs`` [N, 2]: the highest ``priority`` [N] first
    (stable, ties in input order), all when priority is None (first rows). The kept rows stay in
    input order. Logged (every 10 s at most) when the cap is hit."""
    n = pairs.shape[0]
    if max_pairs <= 0 or n <= max_pairs:
        return pairs
    log_every_n_seconds(
        logging.WARNING,
        f"vrd_d2: {n} box pairs in an image{what}: capped at " f"MODEL.VRD.MAX_PAIRS_PER_IMAGE = {max_pairs}",
        n=10,
        name=__name__,
    )
    if priority is None:
        return pairs[:max_pairs]
    keep = priority.argsort(descending=True, stable=True)[:max_pairs].sort().values
    return pairs[keep]


def match_proposals_to_gt(
    proposal_boxes: Boxes, gt_boxes: Boxes, per_gt: int, iou_thresh: float
) -> Tuple[Tensor, Tensor]:
    """For every gold box, its ``per_gt`` proposals of highest IoU among those with IoU >= ``iou_thresh``.

    Args:
        proposal_boxes: Boxes[P]; gt_boxes: Boxes[G] (same image, same coordinates).
    Returns:
        (proposal_index LongTensor[K], gt_index LongTensor[K]): the chosen proposals and the gold
        box each stands for (a proposal chosen by two gold boxes appears twice). Grouped by gold
        box, best IoU first.
    """
    iou = pairwise_iou(gt_boxes, proposal_boxes)  # [G, P]
    g, p = iou.shape
    dev = iou.device
    if g == 0 or p == 0 or per_gt <= 0:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z.clone()
    k = min(per_gt, p)
    val, idx = iou.topk(k, dim=1)  # [G, k] sorted
    ok = val >= iou_thresh
    gt_index = torch.arange(g, device=dev)[:, None].expand(g, k)
    return idx[ok], gt_index[ok]


def pair_triplets(pairs: Tensor, gt_index: Tensor, gt_classes: Tensor, relations: Tensor) -> Tuple[Tensor, Tensor]:
    """The annotated triplets of every pair.

    Args:
        pairs: LongTensor[N, 2] (subject, object) rows into the box list.
        gt_index: LongTensor[B] gold box of each box in the list (-1: none).
        gt_classes: LongTensor[G] gold classes.
        relations: LongTensor[M, 3] (subject gold index, object gold index, predicate).
    Returns:
        (triplets LongTensor[T, 3] (subject class, predicate, object class), pair_index LongTensor[T]).
    """
    dev = pairs.device
    if pairs.numel() == 0 or relations.numel() == 0:
        return torch.zeros((0, 3), dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    gs, go = gt_index[pairs[:, 0]], gt_index[pairs[:, 1]]
    rel = relations.to(dev).long()
    hit = (rel[:, None, 0] == gs[None]) & (rel[:, None, 1] == go[None]) & (gs[None] >= 0)  # [M, N]
    m, n = hit.nonzero(as_tuple=True)
    triplets = torch.stack((gt_classes[rel[m, 0]], rel[m, 2], gt_classes[rel[m, 1]]), 1)
    return triplets, n
