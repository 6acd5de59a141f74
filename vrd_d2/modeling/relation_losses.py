"""Training of the relation head: which pairs are scored, ``loss_cp`` (stage "triplet") and
``loss_sel`` (stage "selection").

- triplet: the annotated pairs of gold boxes (or of RPN proposals matched to them), loss_cp =
  cp_nll_loss summed over the annotated triplets, divided by the number of annotated pairs averaged
  over the processes of a distributed run (:func:`_mean_over_workers`).
- selection: every annotated pair and ``selection_neg_per_pos`` random null pairs per annotated
  pair, loss_sel = binary cross-entropy of the selection logit (annotated = 1).
"""

import math
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.structures import Instances
from detectron2.utils import comm
from torch import Tensor, nn

from .cp_triplet import cp_nll_loss
from .pairs import all_ordered_pairs, cap_pairs, match_proposals_to_gt, pair_triplets

__all__ = ["RelationLoss", "TrainingPairs"]


class TrainingPairs(NamedTuple):
    """The scored pairs of one training image."""

    boxes: Tensor  # [B, 4] XYXY_ABS: gold boxes, or proposals matched to them
    pairs: Tensor  # LongTensor[N, 2] (subject, object) rows into boxes
    triplets: Tensor  # LongTensor[T, 3] annotated (subject class, predicate, object class)
    pair_index: Tensor  # LongTensor[T] row of pairs of each triplet
    annotated: Tensor  # BoolTensor[N] the pair has at least one triplet


def _mean_over_workers(count: int, device) -> float:
    """``count`` averaged over the processes of a distributed run (``count`` in one process), >= 1.

    A per-process sum divided by it makes DDP's mean of the gradients the gradient of the mean
    over every process's items: N processes train like one process with the whole batch, even
    when images carry different numbers of annotated pairs.
    """
    world = comm.get_world_size()
    if world == 1:
        return float(max(count, 1))
    t = torch.tensor([float(count)], device=device)
    torch.distributed.all_reduce(t)
    return max(t.item() / world, 1.0 / world)


class RelationLoss:
    """The relation losses of one training stage ("triplet" or "selection")."""

    @configurable
    def __init__(
        self,
        *,
        train_stage: str,
        train_on_proposals: bool = False,
        proposals_per_gt: int = 4,
        proposal_iou: float = 0.5,
        max_pairs_per_image: int = 10000,
        selection_neg_per_pos: float = 1.0,
    ):
        """
        Args:
            train_stage: "detector" (no relation loss) | "triplet" | "selection".
            train_on_proposals: pair proposals matched to gold boxes instead of gold boxes.
            proposals_per_gt, proposal_iou: the proposal matching of train_on_proposals.
            max_pairs_per_image: cap on scored pairs per image (annotated pairs kept first).
            selection_neg_per_pos: null pairs sampled per annotated pair for loss_sel.
        """
        self.train_stage = train_stage
        self.train_on_proposals = train_on_proposals
        self.proposals_per_gt, self.proposal_iou = proposals_per_gt, proposal_iou
        self.max_pairs_per_image = max_pairs_per_image
        self.selection_neg_per_pos = selection_neg_per_pos

    @classmethod
    def from_config(cls, cfg):
        v = cfg.MODEL.VRD
        return {
            "train_stage": v.TRAIN_STAGE,
            "train_on_proposals": v.TRAIN_ON_PROPOSALS,
            "proposals_per_gt": v.PROPOSALS_PER_GT,
            "proposal_iou": v.PROPOSAL_IOU,
            "max_pairs_per_image": v.MAX_PAIRS_PER_IMAGE,
            "selection_neg_per_pos": v.SELECTION_NEG_PER_POS,
        }

    def training_pairs(
        self, proposals: Optional[List[Instances]], targets: List[Instances], relations: List[Tensor]
    ) -> List[TrainingPairs]:
        """Per image the pairs the stage scores.

        Args:
            proposals: per image RPN Instances (proposal_boxes); read with train_on_proposals only.
            targets: per image gold Instances (gt_boxes, gt_classes).
            relations: per image LongTensor[M, 3] (subject row, object row, predicate).
        """
        out = []
        for i, (gt, rel) in enumerate(zip(targets, relations)):
            if self.train_on_proposals:
                p_idx, g_idx = match_proposals_to_gt(
                    proposals[i].proposal_boxes, gt.gt_boxes, self.proposals_per_gt, self.proposal_iou
                )
                boxes = proposals[i].proposal_boxes.tensor[p_idx].detach()
            else:
                boxes = gt.gt_boxes.tensor
                g_idx = torch.arange(len(gt), device=boxes.device)
            pairs = all_ordered_pairs(boxes.shape[0], boxes.device)
            if self.train_on_proposals:  # two proposals of the same gold box are not a pair
                pairs = pairs[g_idx[pairs[:, 0]] != g_idx[pairs[:, 1]]]
            _, pidx = pair_triplets(pairs, g_idx, gt.gt_classes, rel)
            annotated = torch.zeros(pairs.shape[0], dtype=torch.bool, device=boxes.device)
            annotated[pidx] = True
            if self.train_stage == "triplet":
                # pairs without a triplet add 0 to cp_nll_loss: score only annotated pairs
                keep = annotated.nonzero().squeeze(1)
            else:  # selection: all annotated pairs and a random sample of null pairs
                pos = annotated.nonzero().squeeze(1)
                neg = (~annotated).nonzero().squeeze(1)
                n_neg = min(neg.numel(), int(math.ceil(self.selection_neg_per_pos * pos.numel())))
                neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
                keep = torch.cat((pos, neg)).sort().values
            pairs, annotated = pairs[keep], annotated[keep]
            capped = cap_pairs(
                torch.cat((pairs, torch.arange(pairs.shape[0], device=pairs.device)[:, None]), 1),
                self.max_pairs_per_image,
                annotated.float(),
                " (training)",
            )
            pairs, annotated = capped[:, :2], annotated[capped[:, 2]]
            trip, pidx = pair_triplets(pairs, g_idx, gt.gt_classes, rel)
            out.append(TrainingPairs(boxes, pairs, trip, pidx, annotated))
        return out

    def __call__(
        self,
        pair_logits: Callable[..., Dict[str, Tensor]],
        trained: Iterable[nn.Parameter],
        features: Dict[str, Tensor],
        proposals: Optional[List[Instances]],
        targets: List[Instances],
        relations: List[Tensor],
    ) -> Dict[str, Tensor]:
        """``{"loss_cp"}`` (triplet) or ``{"loss_sel"}`` (selection).

        Args:
            pair_logits: the predictor's ``pair_logits(features, boxes, pairs, image_sizes, want_cp=,
                want_sel=)``.
            trained: the parameters the stage trains; the loss is connected to every one of them
                (a 0 for unused ones) so that DDP sees them all used.
            features, proposals, targets, relations: as :meth:`training_pairs`.
        """
        trained = list(trained)
        zero = sum(p.sum() for p in trained) * 0.0
        per_image = self.training_pairs(proposals, targets, relations)
        stage = self.train_stage
        name = "loss_cp" if stage == "triplet" else "loss_sel"
        if sum(x.pairs.shape[0] for x in per_image) == 0:
            if stage == "triplet":  # the other processes' loss waits for this process's count
                _mean_over_workers(0, zero.device)
            return {name: zero}
        out = pair_logits(
            features,
            [x.boxes for x in per_image],
            [x.pairs for x in per_image],
            [t.image_size for t in targets],
            want_cp=stage == "triplet",
            want_sel=stage == "selection",
        )
        if stage == "triplet":
            return {name: self._cp_loss(out, per_image) + zero}
        target = cat([x.annotated for x in per_image], 0).to(out["sel"].dtype)
        return {name: F.binary_cross_entropy_with_logits(out["sel"], target)}

    @staticmethod
    def _cp_loss(out: Dict[str, Tensor], per_image: List[TrainingPairs]) -> Tensor:
        """Sum of -log psi_c over the annotated triplets / annotated pairs (averaged over processes)."""
        offs, pidx = 0, []
        for x in per_image:
            pidx.append(x.pair_index + offs)
            offs += x.pairs.shape[0]
        pidx = cat(pidx, 0)
        trips = cat([x.triplets for x in per_image], 0)
        loss = cp_nll_loss(out["s_s"], out["s_p"], out["s_o"], trips, pidx, reduction="sum")
        return loss / _mean_over_workers(torch.unique(pidx).numel(), loss.device)
