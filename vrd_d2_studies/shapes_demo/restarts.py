"""Stage-2 restarts of the shapes demo: how many (:func:`num_restarts`), their folders
(:func:`restart_suffix`), the held-out score that chooses among them (:func:`heldout_recall`) and
the line that reports the choice (:func:`restart_line`). The loop itself is
:func:`vrd_d2_studies.shapes_demo.runner.train_triplet`."""

import os

from vrd_d2.engine.rank_usage import format_rank_usage

from .. import ablation
from ..ablation import Variant
from .splits import relation_train_split

__all__ = ["STAGE2_RESTARTS", "num_restarts", "restart_suffix", "heldout_recall", "restart_line"]

STAGE2_RESTARTS = 3  # stage-2 runs at rank > 1, the best on shapes_val kept (shapes_demo.train_triplet)


def num_restarts(options, rank: int) -> int:
    """Stage-2 runs at ``rank`` (``options.restarts``; :data:`STAGE2_RESTARTS` when absent, 1 with
    --quick). Rank 1 trains once: the restarts choose among ways the CP components split, and a
    rank-1 net has one component (its restarts' held-out cross-entropies differed by at most 0.044
    nats in 12 runs, those of rank 5 by up to 0.124; another stage-2 seed moved its recall by at
    most 1.4 points: docs/DESIGN.md, "CP components")."""
    if rank == 1:
        return 1
    n = getattr(options, "restarts", None)
    if n is None:
        n = 1 if options.quick else STAGE2_RESTARTS
    return int(n)


def restart_suffix(k: int) -> str:
    """Folder suffix of restart ``k`` (none for the first, so a one-restart run keeps the old folders)."""
    return f"_restart{k}" if k else ""


def heldout_recall(options, cfg, weights: str, rank: int) -> float:
    """Phrase classification R@50 (free k) on ``<prefix>_val`` of the triplet net ``weights``
    (config ``cfg``) alone: psi_c, no selection head, no prior — the stage-2 model's own ranking
    of the triplets of every gold-box pair, annotated or not."""
    val = f"{options.prefix}_val"
    res = ablation.evaluate_variant(
        cfg,
        weights,
        val,
        "phrase_cls",
        os.path.join(cfg.OUTPUT_DIR, "eval_val"),
        variant=Variant(rank=rank),
        seed=True,
        train_split=relation_train_split(options),
    )
    return float(res["phrase_cls"]["R@50_kfree"])


def restart_line(usage, dataset: str) -> str:
    """:func:`format_rank_usage` of the kept restart, and with several restarts which one was kept
    and every restart's held-out recall and cross-entropy (``usage`` from :func:`train_triplet`)."""
    line = format_rank_usage(usage, dataset)
    nlls = usage.get("restart_nll", [])
    if len(nlls) > 1:
        recalls = usage.get("restart_val_R50", [])
        line += (
            f" Kept restart {usage['restart']} of {len(nlls)} (phrase classification R@50 of psi_c alone "
            f"{', '.join(f'{x:.2f}' for x in recalls)}; cross-entropies {', '.join(f'{x:.3f}' for x in nlls)})."
        )
    return line
