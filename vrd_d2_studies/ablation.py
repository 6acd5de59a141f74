"""The paper's Table 4 ablation as a small runner: named variants, train a stage, score a variant.

One variant is one :class:`vrd_d2.engine.table4.Variant` (named fields); the shapes demo
(:mod:`vrd_d2_studies.shapes_demo.runner`) and the real-VRD study (:mod:`vrd_d2_studies.vrd_geometry.study`) list
theirs and share :func:`train_stage`, :func:`evaluate_variant` and the table helpers below.
"""

import logging
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import yaml
from detectron2.evaluation import inference_on_dataset
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils.env import seed_all_rng

from vrd_d2.checkpoint import VRDCheckpointer
from vrd_d2.engine import Trainer
from vrd_d2.engine.table4 import Variant
from vrd_d2.evaluation import VRDEvaluator
from vrd_d2.model_zoo import get_config_root

__all__ = [
    "Variant",
    "CONFIG_ROOT",
    "stage_output",
    "config_differences",
    "train_stage",
    "evaluate_variant",
    "cell",
    "markdown_rows",
]

logger = logging.getLogger(__name__)

# the configs (vrd_d2.model_zoo: inside the installed package; configs/ of the checkout in development)
CONFIG_ROOT = Path(get_config_root()).resolve()


# paths: a stage folder copied or moved with the folders it reads is still the same stage
_PATH_KEYS = ("OUTPUT_DIR", "MODEL.WEIGHTS")


def _flat_config(text: str) -> Dict[str, object]:
    """{"A.B.C": value} of a config dumped as yaml; a ValueError if it holds no mapping."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"a YAML {type(data).__name__}, not a mapping of config keys")
    return {k.replace("/", "."): v for k, v in flatten_results_dict(data).items()}


def config_differences(saved_yaml: str, cfg) -> List[str]:
    """``"KEY: saved -> now"`` for every config key whose value differs between a stage's saved
    ``config.yaml`` (its text) and ``cfg``, the paths of :data:`_PATH_KEYS` left out."""
    saved, now = _flat_config(saved_yaml), _flat_config(cfg.dump())
    missing = "(absent)"
    return [
        f"{k}: {saved.get(k, missing)} -> {now.get(k, missing)}"
        for k in sorted(set(saved) | set(now))
        if k not in _PATH_KEYS and saved.get(k, missing) != now.get(k, missing)
    ]


def stage_output(cfg, reuse: bool) -> Tuple[str, bool]:
    """(``cfg.OUTPUT_DIR/model_final.pth``, whether it exists and is reused). When the stage is to
    run, the folder is made and ``config.yaml`` written beside the weights to come. A ValueError
    when ``reuse`` finds weights whose ``config.yaml`` differs from ``cfg`` (another recipe in the
    same folder: neither reused nor overwritten), is missing (weights of an unknown recipe) or is
    not a YAML mapping."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if reuse and os.path.isfile(final):
        saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        if not os.path.isfile(saved):
            raise ValueError(
                f"{cfg.OUTPUT_DIR}: reuse asked, but its model_final.pth has no config.yaml beside it, so "
                "its recipe is unknown; remove that folder or write to another output folder"
            )
        with open(saved, "rb") as f:
            text = f.read()
        try:
            diff = config_differences(text.decode("utf-8"), cfg)
        except (UnicodeDecodeError, yaml.YAMLError, ValueError) as e:
            why = " ".join(str(e).split())[:200]
            raise ValueError(
                f"{saved}: not a config dumped as YAML ({why}), so {final} cannot be checked for reuse; "
                "remove that folder or write to another output folder"
            ) from None
        if diff:
            raise ValueError(
                f"{final}: reuse asked, but it was trained with another config ({saved}: "
                + "; ".join(diff[:5])
                + (f"; {len(diff) - 5} more" if len(diff) > 5 else "")
                + "); remove that folder or write to another output folder"
            )
        logger.info("reusing %s", final)
        return final, True
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return final, False


def train_stage(cfg, *, reuse: bool = True, seed: bool = False) -> Tuple[str, float]:
    """Train ``cfg`` (one stage: a vrd_d2 Trainer run) into ``cfg.OUTPUT_DIR``.

    reuse: return an existing ``model_final.pth`` untrained; seed: ``seed_all_rng(cfg.SEED)`` first
    (a repeatable run). Writes ``config.yaml`` beside the weights. Returns (weights path, seconds;
    0.0 when reused). A RuntimeError if training wrote no ``model_final.pth``.
    """
    final, reused = stage_output(cfg, reuse)
    if reused:
        return final, 0.0
    start = time.perf_counter()
    if seed:
        seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    if not os.path.isfile(final):
        raise RuntimeError(f"training {cfg.OUTPUT_DIR} wrote no model_final.pth")
    return final, time.perf_counter() - start


def evaluate_variant(
    cfg,
    weights: str,
    dataset: str,
    mode: str,
    out_dir: str,
    *,
    variant: Optional[Variant] = None,
    eval_mode: Optional[str] = None,
    seed: bool = False,
    **evaluator_kwargs,
) -> Dict[str, dict]:
    """VRDEvaluator results of the model ``weights`` on ``dataset``.

    mode: MODEL.VRD.MODE of the model (gold boxes or detected ones); eval_mode: the evaluator's
    mode (default ``mode``; "sgdet" to score given detections as relationship detection);
    variant: written into the config first when given; seed: ``seed_all_rng(cfg.SEED)`` before the
    model is built. Extra keyword arguments go to VRDEvaluator (e.g. ``gt_mat``;
    ``save_predictions=True`` writes ``relations_results.json`` to ``out_dir``; default off). A
    RuntimeError if the evaluator returns nothing.
    """
    cfg = cfg.clone()
    if variant is not None:
        variant.apply(cfg)
    cfg.MODEL.VRD.MODE = mode
    cfg.DATASETS.TEST = (dataset,)
    if seed:
        seed_all_rng(cfg.SEED)
    model = Trainer.build_model(cfg)
    # the relation head must come from the checkpoint; "" (the prior alone: uniform psi_c) loads nothing
    VRDCheckpointer(model, require_relation_head=bool(weights)).load(weights)
    model.eval()
    evaluator_kwargs.setdefault("save_predictions", False)
    evaluator = VRDEvaluator(
        dataset,
        mode=eval_mode or mode,
        output_dir=out_dir,
        distributed=False,
        k_values=tuple(cfg.MODEL.VRD.TEST.K_PER_PAIR),
        **evaluator_kwargs,
    )
    with torch.no_grad():
        res = inference_on_dataset(model, Trainer.build_test_loader(cfg, dataset), evaluator)
    if not res:
        raise RuntimeError(f"{dataset} / {mode}: the evaluator returned nothing")
    return res


def cell(res: Dict[str, dict], task: str, metric: str) -> str:
    """``res[task][metric]`` with 2 decimals, or "–" when absent."""
    v = res.get(task, {}).get(metric)
    return "–" if v is None else f"{v:.2f}"


def markdown_rows(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list:
    """A markdown table (header, separator, rows) as a list of lines."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines
