"""The Scene-Graph-Benchmark's protocol ("sgb"): per-image means, many-to-one hits, graph constraint
= k 1, no graph constraint = free k (the rules: :mod:`vrd_d2.evaluation.sgb`; docs/EVALUATION.md)."""

from typing import Optional, Sequence

from ..sgb import SGB_TOPK, evaluate_records_sgb, format_sgb_table, load_sgb_zeroshot_triplets, zeroshot_rows
from .registry import VRD_PROTOCOL_REGISTRY, ProtocolResult, RelationProtocol, tasks_for_mode

__all__ = ["SGBProtocol"]


@VRD_PROTOCOL_REGISTRY.register()
class SGBProtocol(RelationProtocol):
    """SGB's R@K / mR@K / zR@K with graph constraint and ngR@K / ng-mR@K / ng-zR@K without, K of
    ``topk_values`` (default :data:`~vrd_d2.evaluation.sgb.SGB_TOPK`). No ``_complete`` tasks."""

    name = "sgb"
    title = "Scene-Graph-Benchmark"

    def __init__(
        self,
        *,
        mode: str = "sgdet",
        topk_values: Optional[Sequence[int]] = None,
        iou_threshold: float = 0.5,
        sgb_zeroshot_triplets: Optional[str] = None,
        **unused,
    ):
        """``sgb_zeroshot_triplets``: SGB's ``zeroshot_triplet.pytorch``; its triplets are the
        zero-shot rows of zR@K (default: the ground truth's own zero-shot flags)."""
        super().__init__(mode=mode, iou_threshold=iou_threshold)
        self.topk_values = tuple(int(k) for k in topk_values) if topk_values else SGB_TOPK
        self.zeroshot_triplets = load_sgb_zeroshot_triplets(sgb_zeroshot_triplets) if sgb_zeroshot_triplets else None

    def evaluate(self, predictions, ground_truths, complete_ground_truths=None, num_predicates=None):
        if self.zeroshot_triplets is not None:
            ground_truths = [
                dict(g, zeroshot=zeroshot_rows(g["labels"], self.zeroshot_triplets)) for g in ground_truths
            ]
        results, counts = evaluate_records_sgb(
            predictions,
            ground_truths,
            tasks_for_mode(self.mode),
            self.topk_values,
            num_predicates,
            self.iou_threshold,
        )
        c = next(iter(counts.values()))
        notes = (
            f"(per-image means over {c['images']} images; left out as in SGB: "
            f"{c['skipped_no_gt']} without ground-truth relations, {c['skipped_no_pred']} "
            f"without predictions)"
        )
        return ProtocolResult(results, notes=notes, record={"sgb_images": counts})

    def table(self, results):
        return format_sgb_table(results)

    def settings(self):
        return {"sgb_topk_values": list(self.topk_values)}
