"""Inference of the relation head: the scored triplets of the box pairs of one image.

The score of a triplet t in a pair (b_s, b_o) is

    P(b_s) P(b_o) * psi_c(t) psi_u(t) * P(X_sel | b_s, b_o)                         (eq. 7)

(box scores, CP distribution, triplet prior, selection), decoded exactly per pair (``.decode``);
in "predcls" the labels are given and the predicates are ranked. With ``crf_normalize`` the
product psi_c psi_u is divided by its sum over the pair's triplets (over its predicates in
"predcls"), so that P(t | b) is a distribution per pair.
Pairs run through the predictor in chunks (bounded memory); the output is the union over k in
``k_per_pair`` of "the top ``topk_per_image`` triplets with at most k per pair", as the relation
field (:data:`RELATION_FIELDS`, docs/DESIGN.md "Model output").
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from torch import Tensor

from .cp_triplet import TripletPrior, crf_log_normalizer
from .decode import topk_per_image, topk_predicates_given_labels, topk_triplets_per_pair
from .pairs import all_ordered_pairs, cap_pairs

__all__ = ["RelationInference", "RELATION_FIELDS", "empty_relations", "union_over_k"]


# the relation field of the model output (docs/DESIGN.md "Model output")
RELATION_FIELDS = (
    "pair_indices",
    "subject_boxes",
    "object_boxes",
    "subject_classes",
    "predicate_classes",
    "object_classes",
    "scores",
    "pair_rank",
)


def empty_relations(image_size, device=None) -> Instances:
    """A relation field with 0 rows (images with fewer than 2 boxes)."""
    z = torch.zeros(0, dtype=torch.long, device=device)
    return Instances(
        image_size,
        pair_indices=torch.zeros((0, 2), dtype=torch.long, device=device),
        subject_boxes=Boxes(torch.zeros((0, 4), device=device)),
        object_boxes=Boxes(torch.zeros((0, 4), device=device)),
        subject_classes=z,
        predicate_classes=z.clone(),
        object_classes=z.clone(),
        scores=torch.zeros(0, device=device),
        pair_rank=z.clone(),
    )


def union_over_k(scores: Tensor, triplets: Tensor, k_per_pair: Sequence[int], topk: int) -> Tuple[Tensor, Tensor]:
    """Union over k in ``k_per_pair`` of the top ``topk`` triplets with at most k per pair (0 = free).

    Args:
        scores: Tensor[N, k'] per-pair log-scores, rows sorted descending; triplets: LongTensor[N, k', 3].
    Returns:
        (pair_index LongTensor[T], rank LongTensor[T]): rows of ``scores``, score descending
        (stable: ties in (pair, rank) order).
    """
    kk = scores.shape[1]
    keys = []  # (pair, rank within pair) as one id
    for k in k_per_pair:
        pi, _, _, rank = topk_per_image(scores, triplets, k, topk)
        keys.append(pi * kk + rank)
    keys = torch.unique(torch.cat(keys))
    pi, rank = keys // kk, keys % kk
    order = scores[pi, rank].argsort(descending=True, stable=True)
    return pi[order], rank[order]


class RelationInference:
    """Scores the pairs of the given boxes of one image (see the module docstring)."""

    # the exact decoders; a subclass may swap in another one (e.g. a dense reference to compare with)
    decode_triplets = staticmethod(topk_triplets_per_pair)
    decode_predicates = staticmethod(topk_predicates_given_labels)

    @configurable
    def __init__(
        self,
        *,
        mode: str = "sgdet",
        use_prior: bool = True,
        use_cp: bool = True,
        use_selection: bool = True,
        use_box_score: bool = True,
        topk_per_image: int = 100,
        k_per_pair: Sequence[int] = (1, 10, 0),
        pair_batch: int = 1024,
        max_pairs_per_image: int = 10000,
        crf_normalize: bool = False,
    ):
        """
        Args:
            mode: "sgdet" | "phrase_cls" (triplets decoded) | "predcls" (labels given: predicates).
            use_prior, use_selection, use_box_score: test-time score terms (ablations).
            use_cp: False replaces psi_c by the uniform distribution, so the triplet score is the
                frequency prior alone (the baseline of the ablations).
            topk_per_image, k_per_pair: output = union over k in k_per_pair of the top
                topk_per_image triplets with at most k per pair (0 = free k).
            pair_batch: pairs per predictor call (bounds peak memory).
            max_pairs_per_image: cap on ordered pairs (the highest box-score products kept; logged).
            crf_normalize: divide psi_c psi_u by its per-pair sum (False: eq. 7's product).
        """
        self.mode = mode
        self.use_prior, self.use_cp, self.use_selection, self.use_box_score = (
            use_prior,
            use_cp,
            use_selection,
            use_box_score,
        )
        self.topk_per_image = topk_per_image
        self.k_per_pair = [int(k) for k in k_per_pair]
        self.pair_batch = max(1, int(pair_batch))
        self.max_pairs_per_image = max_pairs_per_image
        self.crf_normalize = crf_normalize

    @classmethod
    def from_config(cls, cfg):
        v = cfg.MODEL.VRD
        return {
            "mode": v.MODE,
            "use_prior": v.USE_PRIOR,
            "use_cp": v.USE_CP,
            "use_selection": v.USE_SELECTION,
            "use_box_score": v.USE_BOX_SCORE,
            "topk_per_image": v.TEST.TOPK_PER_IMAGE,
            "k_per_pair": list(v.TEST.K_PER_PAIR),
            "pair_batch": v.TEST.PAIR_BATCH,
            "max_pairs_per_image": v.MAX_PAIRS_PER_IMAGE,
            "crf_normalize": v.CRF_NORMALIZE,
        }

    def __call__(
        self,
        pair_logits: Callable[..., Dict[str, Tensor]],
        prior: Optional[TripletPrior],
        features: Dict[str, Tensor],
        instances: Instances,
    ) -> Instances:
        """The relation field of one image.

        Args:
            pair_logits: the predictor's ``pair_logits(features, boxes, pairs, image_sizes, want_cp=,
                want_sel=)``.
            prior: psi_u (used when use_prior).
            features: this image's backbone features (batch of 1; may be empty with "geometry").
            instances: pred_boxes (input-image coordinates), pred_classes (read by "predcls"),
                scores (P(b), read with use_box_score).
        Returns:
            Instances with the fields of RELATION_FIELDS, sorted by score descending.
        """
        boxes = instances.pred_boxes.tensor
        n = boxes.shape[0]
        if n < 2:
            return empty_relations(instances.image_size, boxes.device)
        if self.use_box_score and instances.has("scores"):
            log_box = instances.scores.clamp(min=1e-12).log()
        else:
            log_box = boxes.new_zeros(n)
        pairs = all_ordered_pairs(n, boxes.device)
        pairs = cap_pairs(pairs, self.max_pairs_per_image, log_box[pairs[:, 0]] + log_box[pairs[:, 1]], " (test)")
        scores, triplets = [], []
        for a in range(0, pairs.shape[0], self.pair_batch):
            chunk = pairs[a : a + self.pair_batch]
            out = pair_logits(
                features, [boxes], [chunk], [instances.image_size], want_cp=True, want_sel=self.use_selection
            )
            weight = log_box[chunk[:, 0]] + log_box[chunk[:, 1]]
            v, t = self._decode(out, chunk, weight, instances, prior if self.use_prior else None)
            scores.append(v)
            triplets.append(t)
        scores, triplets = torch.cat(scores), torch.cat(triplets)
        pi, rank = union_over_k(scores, triplets, self.k_per_pair, self.topk_per_image)
        trip, pair = triplets[pi, rank], pairs[pi]
        return Instances(
            instances.image_size,
            pair_indices=pair,
            subject_boxes=Boxes(boxes[pair[:, 0]]),
            object_boxes=Boxes(boxes[pair[:, 1]]),
            subject_classes=trip[:, 0],
            predicate_classes=trip[:, 1],
            object_classes=trip[:, 2],
            scores=scores[pi, rank].exp(),
            pair_rank=rank,
        )

    def _decode(
        self, out: Dict[str, Tensor], pairs: Tensor, weight: Tensor, instances: Instances, prior: Optional[TripletPrior]
    ) -> Tuple[Tensor, Tensor]:
        """Top triplets of each pair of a chunk: (log-scores [N, k'], triplets [N, k', 3])."""
        if not self.use_cp:  # all log-factors equal: psi_c is uniform
            out.update({k: torch.zeros_like(out[k]) for k in ("s_s", "s_p", "s_o")})
        s_s, s_p, s_o = out["s_s"], out["s_p"], out["s_o"]
        if self.use_selection:
            weight = weight + F.logsigmoid(out["sel"])
        topk = self.topk_per_image
        if self.mode == "predcls":
            cls = instances.pred_classes
            # labels are given (gold or a detector's): normalized, P(b_s) P(b_o) P(p | s, o, b) P(X_sel)
            return self.decode_predicates(
                s_s,
                s_p,
                s_o,
                cls[pairs[:, 0]],
                cls[pairs[:, 1]],
                topk,
                prior=prior,
                pair_log_weight=weight,
                normalize=self.crf_normalize,
            )
        if prior is not None and self.crf_normalize:  # psi_c sums to 1 per pair: only the prior needs it
            weight = weight - crf_log_normalizer(s_s, s_p, s_o, prior).to(weight)
        return self.decode_triplets(s_s, s_p, s_o, topk, prior=prior, pair_log_weight=weight)
