"""How much of its CP rank a trained triplet net uses, on the gold-box pairs of a dataset.

A rank-R net whose components collapsed into one (one component holds all of every pair's mass)
is a rank-1 net, whatever R says; its rank ablation then shows nothing (docs/DESIGN.md, "CP
components"). :func:`cp_rank_usage` runs the net on every ordered pair of gold boxes and averages
:func:`~vrd_d2.modeling.cp_usage.component_shares` (sorted per pair) and
:func:`~vrd_d2.modeling.cp_usage.rank1_divergence`; the shapes demo prints it after stage 2. It
also gives the held-out cross-entropy of the annotated triplets (the training loss on unseen
images), by which the demo picks among stage-2 restarts.
"""

from typing import Dict, Optional

import torch

from ..checkpoint import VRDCheckpointer
from ..modeling.cp_triplet import triplet_log_prob
from ..modeling.cp_usage import component_shares, rank1_divergence
from ..modeling.pairs import all_ordered_pairs, pair_triplets
from .trainer import Trainer

__all__ = ["cp_rank_usage", "format_rank_usage"]


@torch.no_grad()
def cp_rank_usage(cfg, weights: str, dataset: str, max_images: Optional[int] = None) -> Dict[str, object]:
    """The triplet net of ``weights`` on every ordered gold-box pair of ``dataset`` (of its first
    ``max_images`` images when given: a bounded, cheap check).

    Returns a dict: ``rank``, ``pairs`` (counted), ``shares`` (list [R]: the mean over pairs of
    the components' shares of the mass, each pair's sorted largest first), ``rank1_kl`` (mean
    KL in nats of psi_c to the product of its marginals; 0 for a rank-1 net), ``triplets`` (the
    annotated relations counted) and ``nll`` (their mean -log psi_c(subject class, predicate,
    object class) at their gold pair, in nats; NaN without relations).
    """
    cfg = cfg.clone()
    cfg.MODEL.VRD.MODE = "phrase_cls"  # the test mapper keeps the gold boxes
    cfg.DATASETS.TEST = (dataset,)
    model = Trainer.build_model(cfg)
    VRDCheckpointer(model, require_relation_head=True).load(weights)
    model.eval()
    rank = cfg.MODEL.VRD.RANK
    share_sum, kl_sum, n = torch.zeros(rank, dtype=torch.float64), 0.0, 0
    nll_sum, n_triplets, n_images = 0.0, 0, 0
    for batch in Trainer.build_test_loader(cfg, dataset):
        if max_images is not None and n_images >= max_images:
            break
        n_images += len(batch)
        images, sizes = model._image_sizes(batch)
        features = model._backbone(images)
        boxes = [x["instances"].gt_boxes.tensor.to(model.device) for x in batch]
        pairs = [all_ordered_pairs(len(b), model.device) for b in boxes]
        if sum(len(p) for p in pairs) == 0:
            continue
        out = model.roi_heads.pair_logits(features, boxes, pairs, sizes, want_sel=False)
        f = [out[k].double().cpu() for k in ("s_s", "s_p", "s_o")]
        share_sum += component_shares(*f).sort(dim=1, descending=True).values.sum(0)
        kl_sum += float(rank1_divergence(*f).sum())
        triplets, pair_index = _annotated_triplets(batch, pairs)
        if len(triplets):
            nll_sum -= float(triplet_log_prob(*f, triplets, pair_index).sum())
            n_triplets += len(triplets)
        n += f[0].shape[0]
    if n == 0:
        raise ValueError(f"cp_rank_usage: {dataset} has no image with two or more gold boxes")
    return {
        "rank": rank,
        "images": n_images,
        "pairs": n,
        "shares": (share_sum / n).tolist(),
        "rank1_kl": kl_sum / n,
        "triplets": n_triplets,
        "nll": nll_sum / n_triplets if n_triplets else float("nan"),
    }


def _annotated_triplets(batch, pairs):
    """The annotated relations of ``batch`` as (LongTensor[M, 3] (subject class, predicate, object
    class), LongTensor[M] row of the pair in the concatenation of ``pairs`` (one LongTensor[N_i, 2]
    per image), image after image), by :func:`~vrd_d2.modeling.pairs.pair_triplets` on gold boxes."""
    triplets, pair_index, offset = [], [], 0
    for x, p in zip(batch, pairs):
        rel = x.get("relations")
        if rel is not None and len(rel):
            cls = x["instances"].gt_classes.long().cpu()
            p = p.cpu()
            t, rows = pair_triplets(p, torch.arange(len(cls)), cls, torch.as_tensor(rel))
            triplets.append(t)
            pair_index.append(rows + offset)
        offset += len(p)
    if not triplets:
        return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(triplets), torch.cat(pair_index)


def format_rank_usage(usage: Dict[str, object], dataset: str) -> str:
    """One line: the components' mean shares, the divergence from rank 1, the held-out cross-entropy."""
    shares = ", ".join(f"{s:.2f}" for s in usage["shares"])
    return (
        f"Stage-2 CP net, rank {usage['rank']}, on the {usage['pairs']} gold-box pairs of {dataset}: "
        f"mean share of the mass per component (largest first) {shares}; "
        f"KL(psi_c || product of its marginals) {usage['rank1_kl']:.3f} nats (0: a rank-1 net); "
        f"cross-entropy of its {usage['triplets']} annotated triplets {usage['nll']:.3f} nats."
    )
