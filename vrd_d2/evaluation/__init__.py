"""Relation evaluation: recall protocols behind a registry (Lu et al.'s, the Scene-Graph-Benchmark's;
docs/EVALUATION.md), a DatasetEvaluator and results-file readers."""

from .matching import (
    CRITERIA,
    box_iou_inclusive,
    compute_pair_rank,
    greedy_match,
    match_relations,
    pair_overlaps,
    select_top_predictions,
    union_boxes,
)
from .protocols import (
    VRD_PROTOCOL_REGISTRY,
    ProtocolResult,
    RelationProtocol,
    evaluate_records,
    format_results_table,
    protocol_choices,
    resolve_protocol,
    tasks_for_mode,
)
from .recall import (
    RecallCounts,
    best_k_from_results,
    count_recall_hits,
    k_label,
    recall_metrics,
    select_best_k,
)
from .results_io import (
    dataset_ground_truth,
    load_lu_ground_truth,
    load_lu_results_mat,
    relations_to_json_images,
    relations_to_record,
    validate_prediction,
    write_results_json,
)
from .results_json import load_results_json
from .sgb import (
    SGB_TOPK,
    evaluate_records_sgb,
    format_sgb_table,
    load_sgb_zeroshot_triplets,
    sgb_hit_matrix,
    sgb_recall,
    zeroshot_rows,
)
from .vrd_evaluation import VRDEvaluator

__all__ = [
    k
    for k in globals().keys()
    if not k.startswith("_")
    and k not in ("matching", "protocols", "recall", "results_io", "results_json", "sgb", "vrd_evaluation")
]
