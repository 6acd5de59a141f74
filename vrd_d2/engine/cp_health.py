"""After every triplet-net stage the pipeline runs (stage 2, stage 4, each Table 4 rank): how much
of its CP rank the net uses, on held-out pairs.

Under SGD a rank-R CP net can collapse into one component (every pair's mass in one term): a rank-1
net whatever R says, and a Table 4 rank row that shows nothing. :func:`stage_cp_usage` runs
:func:`vrd_d2.engine.rank_usage.cp_rank_usage` on the gold-box pairs of the first
:data:`HELD_OUT_IMAGES` test images; :func:`triplet_steps_usage` does so once per finished stage
(cached as ``<OUTPUT_DIR>/cp_usage.json`` beside its ``model_final.pth``), logs each, and warns
loudly when a net of rank > 1 has KL(psi_c || product of its marginals) below
:data:`COLLAPSE_KL`. The pipeline's table.md / table.json carry the result.
"""

import json
import logging
import os
from typing import Callable, Dict, Sequence

from ..utils.safe_write import atomic_write_text

__all__ = [
    "COLLAPSE_KL",
    "HELD_OUT_IMAGES",
    "USAGE_FILE",
    "is_collapsed",
    "stage_cp_usage",
    "triplet_steps_usage",
    "format_usage_table",
]

logger = logging.getLogger(__name__)

#: nats; a rank-1 net has exactly 0: below this a net of rank > 1 is reported collapsed
COLLAPSE_KL = 0.01
HELD_OUT_IMAGES = 50  # bounded: a few seconds of inference after a stage of hours
USAGE_FILE = "cp_usage.json"
TRIPLET_CONFIGS = ("stage2_triplet.yaml", "stage2_triplet_proposals.yaml")


def is_collapsed(usage: Dict[str, object]) -> bool:
    """Whether a net of rank > 1 is (nearly) rank 1: its KL to the product of marginals is below
    :data:`COLLAPSE_KL`. False for a failed check (``"error"``) and for rank 1."""
    return "error" not in usage and usage["rank"] > 1 and usage["rank1_kl"] < COLLAPSE_KL


def stage_cp_usage(config: str, opts: Sequence[str], output_dir: str, repo: str = ".") -> Dict[str, object]:
    """:func:`~vrd_d2.engine.rank_usage.cp_rank_usage` of ``<output_dir>/model_final.pth``, the
    config ``config`` (relative to ``repo``) with ``opts``, on its first test dataset's first
    :data:`HELD_OUT_IMAGES` images."""
    from detectron2.config import get_cfg

    from ..config import add_vrd_config
    from .rank_usage import cp_rank_usage

    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(os.path.join(repo, config))
    cfg.merge_from_list(list(opts))
    weights = os.path.join(repo, output_dir, "model_final.pth")
    return cp_rank_usage(cfg, weights, cfg.DATASETS.TEST[0], max_images=HELD_OUT_IMAGES)


def _summary(name: str, usage: Dict[str, object]) -> str:
    if "error" in usage:
        return f"CP usage after {name}: not measured: {usage['error']}"
    shares = ", ".join(f"{s:.2f}" for s in usage["shares"])
    line = (
        f"CP usage after {name}: rank {usage['rank']}, {usage['pairs']} held-out pairs of {usage['images']} images; "
        f"component shares (largest first) {shares}; KL(psi_c || product of its marginals) {usage['rank1_kl']:.4f} nats"
    )
    if is_collapsed(usage):
        line = f"WARNING: {line}: COLLAPSED to one component (KL < {COLLAPSE_KL})"
    return line


def triplet_steps_usage(steps, repo: str, usage_fn: Callable, out) -> Dict[str, Dict[str, object]]:
    """``{step name: usage}`` of the finished triplet-net steps of ``steps`` (``Step`` of
    :mod:`vrd_d2.engine.pipeline`), each from ``usage_fn(step)`` (a dict as
    :func:`stage_cp_usage` returns) unless its ``cp_usage.json`` is newer than its checkpoint;
    each is written there, printed to ``out`` and logged (a collapse as a warning). A check that
    fails is recorded as ``{"error": message}``, not raised: the stage's training is done."""
    found = {}
    for step in steps:
        final = os.path.join(repo, step.output_dir, "model_final.pth")
        if step.eval_only or os.path.basename(step.config) not in TRIPLET_CONFIGS or not os.path.isfile(final):
            continue
        cache = os.path.join(repo, step.output_dir, USAGE_FILE)
        usage = None
        if os.path.isfile(cache) and os.path.getmtime(cache) >= os.path.getmtime(final):
            try:
                with open(cache) as f:
                    usage = json.load(f)
            except ValueError:
                usage = None  # a damaged cache: measured again
        if not isinstance(usage, dict) or not ("error" in usage or {"rank", "shares", "rank1_kl"} <= set(usage)):
            try:
                usage = dict(usage_fn(step))
            except Exception as e:  # noqa: BLE001 - a diagnostic must not lose the trained stages
                usage = {"error": f"{type(e).__name__}: {e}"}
            atomic_write_text(cache, json.dumps(usage, indent=2) + "\n")
        line = _summary(step.name, usage)
        (logger.warning if is_collapsed(usage) or "error" in usage else logger.info)(line)
        print(f"# {line}", file=out)
        found[step.name] = usage
    return found


def format_usage_table(usage: Dict[str, Dict[str, object]]) -> str:
    """Markdown: a loud line per collapsed net, then one row per triplet-net stage."""
    lines = [f"**WARNING**: {_summary(n, u).removeprefix('WARNING: ')}" for n, u in usage.items() if is_collapsed(u)]
    lines += [
        "" if lines else None,
        f"**CP component usage** after each triplet-net stage, on the gold-box pairs of up to {HELD_OUT_IMAGES} "
        f"held-out images (a rank > 1 net with KL below {COLLAPSE_KL} nats has collapsed to one component)",
        "",
        "| stage | rank | pairs | component shares (largest first) | KL(psi_c ‖ marginals), nats | status |",
        "|---|---|---|---|---|---|",
    ]
    for name, u in usage.items():
        if "error" in u:
            lines.append(f"| {name} | – | – | – | – | not measured: {u['error']} |")
            continue
        status = "**COLLAPSED**" if is_collapsed(u) else "ok"
        shares = ", ".join(f"{s:.2f}" for s in u["shares"])
        lines.append(f"| {name} | {u['rank']} | {u['pairs']} | {shares} | {u['rank1_kl']:.4f} | {status} |")
    return "\n".join(line for line in lines if line is not None) + "\n"
