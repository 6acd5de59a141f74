"""VRDEvaluator: relationship / phrase detection recall (Lu et al.'s protocol) as a Detectron2
DatasetEvaluator. Protocol and result names: docs/EVALUATION.md."""

import copy
import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from .recall import DENOMINATORS, count_recall_hits, k_label, recall_metrics
from .results_io import (
    dataset_ground_truth,
    image_key,
    load_lu_ground_truth,
    relations_to_record,
    validate_prediction,
    write_results_json,
)

__all__ = ["VRDEvaluator", "MODES", "tasks_for_mode", "evaluate_records", "format_results_table"]

logger = logging.getLogger(__name__)

#: model modes (MODEL.VRD.MODE) and the tasks each reports
MODES = ("sgdet", "phrase_cls", "predcls")


def tasks_for_mode(mode: str):
    """[(task name, matching criterion)]: sgdet reports relationship and phrase detection; the
    gold-box modes report the relationship criterion under the mode's own name."""
    if mode == "sgdet":
        return [("relationship", "relationship"), ("phrase", "phrase")]
    if mode in ("phrase_cls", "predcls"):
        return [(mode, "relationship")]
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def evaluate_records(
    predictions: Sequence[Optional[dict]],
    ground_truths: Sequence[dict],
    mode: str = "sgdet",
    k_values: Sequence[int] = (1, 10, 0),
    topk_values: Sequence[int] = (50, 100),
    num_predicates: Optional[int] = None,
    complete_ground_truths: Optional[Sequence[dict]] = None,
    best_k: Optional[int] = None,
    iou_threshold: float = 0.5,
    denominator: str = "rows",
) -> "OrderedDict[str, Dict[str, float]]":
    """Results dict task -> metric -> percent from aligned per-image records (see recall.py).

    Metrics per task, for each k of ``k_values`` (suffix ``k1``, ``k10``, ``kfree``) and each K of
    ``topk_values``: ``R@K_<k>``, ``mR@K_<k>``, ``zsR@K_<k>`` (when the ground truth has zero-shot
    flags). With ``best_k`` (chosen on a validation split, :func:`~.recall.best_k_from_results`)
    the same metrics again with suffix ``kbest`` and ``best_k`` = that k (not a percentage).
    Tasks ``<task>_complete`` (when ``complete_ground_truths`` is given) use that ground truth.
    """
    ks = [int(k) for k in k_values]
    if best_k is not None and int(best_k) not in ks:
        ks.append(int(best_k))
    results = OrderedDict()
    sets = [("", ground_truths)]
    if complete_ground_truths is not None:
        sets.append(("_complete", complete_ground_truths))
    for suffix, gts in sets:
        for task, criterion in tasks_for_mode(mode):
            metrics = OrderedDict()
            for k in ks:
                counts = count_recall_hits(
                    predictions, gts, criterion, k, topk_values, num_predicates,
                    iou_threshold, denominator,
                )
                m = recall_metrics(counts, k_label(k))
                if k in k_values:
                    metrics.update(m)
                if best_k is not None and k == int(best_k):
                    metrics.update(recall_metrics(counts, "kbest"))
                    metrics["best_k"] = float(best_k)
            results[task + suffix] = metrics
    return results


def format_results_table(results: Dict[str, Dict[str, float]]) -> str:
    """One row per (task, k), columns R@K / mR@K / zsR@K."""
    rows, columns = [], []
    for task, metrics in results.items():
        by_k = OrderedDict()
        for name, value in metrics.items():
            if "_" not in name or name == "best_k":
                continue
            metric, suffix = name.rsplit("_", 1)
            by_k.setdefault(suffix, OrderedDict())[metric] = value
            if metric not in columns:
                columns.append(metric)
        for suffix, vals in by_k.items():
            label = suffix
            if suffix == "kbest" and "best_k" in metrics:
                label = f"kbest (k={int(metrics['best_k'])})"
            rows.append([task, label] + [vals.get(c, float("nan")) for c in columns])
    return tabulate(rows, headers=["task", "k/pair"] + columns, tablefmt="pipe", floatfmt=".2f",
                    numalign="left")


class VRDEvaluator(DatasetEvaluator):
    """Recall of visual relationships (R@50/100, mR, zero-shot R) for every k per pair.

    Reads ``outputs[i]["relations"]`` (DESIGN.md "Model output"): for each k of ``k_values`` it
    keeps the rows with ``pair_rank < k`` (all rows for k = 0, free k), sorts them by score and
    takes the top K (K = 50, 100). Ground truth comes from ``DatasetCatalog.get(dataset_name)``
    matched by ``image_id``, or from Lu et al.'s gt.mat (matched by image file name) if
    ``gt_mat`` is given.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        *,
        mode: str = "sgdet",
        output_dir: Optional[str] = None,
        distributed: bool = True,
        k_values: Sequence[int] = (1, 10, 0),
        topk_values: Sequence[int] = (50, 100),
        best_k: Optional[int] = None,
        gt_mat: Optional[str] = None,
        image_path_mat: Optional[str] = None,
        zeroshot_mat: Optional[str] = None,
        iou_threshold: float = 0.5,
        denominator: str = "rows",
        save_predictions: bool = True,
        num_objects: Optional[int] = None,
        num_predicates: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset (DESIGN.md "Dataset record"); its metadata gives
                the class lists, ``train_split`` (zero-shot = triplets with training count 0).
            mode: "sgdet" (tasks relationship, phrase), "phrase_cls" or "predcls" (one task of
                that name, relationship criterion).
            output_dir: where ``vrd_evaluation.json`` (and ``relations_results.json``) go.
            distributed: gather predictions from all processes (``comm.gather``) and evaluate on
                the main one.
            k_values: triplets per pair to evaluate; 0 = free k.
            topk_values: the K of R@K (predictions per image).
            best_k: k chosen on a validation split (``best_k_from_results``), reported as
                ``*_kbest`` plus ``best_k``.
            gt_mat: Lu et al.'s gt.mat: use it as ground truth instead of the dataset dicts
                (duplicates counted, as Lu). ``image_path_mat`` defaults to the metadata's
                ``image_path_mat`` or ``<gt_mat dir>/../data/imagePath.mat``; ``zeroshot_mat``
                to ``zeroShot.mat`` beside gt.mat when it exists.
            iou_threshold: overlap needed for a hit (``>=``; Lu: 0.5).
            denominator: "rows" or "matlab_length" (see docs/EVALUATION.md).
            save_predictions: write our JSON results file to output_dir.
            num_objects, num_predicates: class-list sizes for the input checks (default: the
                metadata's thing_classes / predicate_classes).
        """
        if mode not in MODES:
            raise ValueError(f"VRDEvaluator: mode must be one of {MODES}, got {mode!r}")
        if denominator not in DENOMINATORS:
            raise ValueError(f"VRDEvaluator: denominator must be one of {DENOMINATORS}")
        if not k_values or any(int(k) < 0 for k in k_values):
            raise ValueError(f"VRDEvaluator: k_values must be >= 0 (0 = free k), got {k_values}")
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._mode = mode
        self._output_dir = output_dir
        self._distributed = distributed
        self._k_values = tuple(int(k) for k in k_values)
        self._topk_values = tuple(int(k) for k in topk_values)
        self._best_k = best_k
        self._iou_threshold = float(iou_threshold)
        self._denominator = denominator
        self._save_predictions = save_predictions
        # class-list sizes for input checks when the metadata has none (gt.mat without dataset)
        self._num_objects = num_objects
        self._num_predicates = num_predicates
        self._gt_mat = gt_mat
        if gt_mat is not None:
            if image_path_mat is None:
                image_path_mat = self._metadata.get("image_path_mat", None) or os.path.join(
                    os.path.dirname(os.path.dirname(os.path.abspath(gt_mat))), "data", "imagePath.mat"
                )
            if zeroshot_mat is None:
                cand = os.path.join(os.path.dirname(os.path.abspath(gt_mat)), "zeroShot.mat")
                zeroshot_mat = cand if os.path.isfile(cand) else None
        self._image_path_mat = image_path_mat
        self._zeroshot_mat = zeroshot_mat
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None, distributed=True):
        return {
            "dataset_name": dataset_name,
            "mode": cfg.MODEL.VRD.MODE,
            "output_dir": output_dir,
            "distributed": distributed,
            "k_values": tuple(cfg.MODEL.VRD.TEST.K_PER_PAIR),
        }

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """Keep, per image, image_id, file name and the relation rows as numpy (CPU)."""
        for inp, out in zip(inputs, outputs):
            if "relations" not in out:
                raise KeyError(
                    f"VRDEvaluator: model output for image_id={inp.get('image_id')} has no "
                    f"'relations' (keys {sorted(out)})"
                )
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "file_name": inp.get("file_name", ""),
                    "image_name": inp.get("image_name", None),
                    "record": relations_to_record(out["relations"]),
                }
            )

    # -----------------------------------------------------------------------------------------
    def _load_dataset_ground_truth(self, predictions):
        dicts = DatasetCatalog.get(self._dataset_name)
        by_id = {}
        for d in dicts:
            if d["image_id"] in by_id:
                raise ValueError(f"{self._dataset_name}: image_id {d['image_id']} appears twice")
            by_id[d["image_id"]] = d
        counts = self._zeroshot_counts()
        gts, complete = [], []
        has_complete = any("relations_complete" in d for d in dicts)
        for p in predictions:
            d = by_id.get(p["image_id"])
            if d is None:
                raise KeyError(
                    f"VRDEvaluator: prediction for image_id={p['image_id']} ({p['file_name']}) "
                    f"but {self._dataset_name} has no such image"
                )
            gts.append(dataset_ground_truth(d, "relations", counts))
            if has_complete:
                key = "relations_complete" if "relations_complete" in d else "relations"
                complete.append(dataset_ground_truth(d, key, None))
        if len(predictions) < len(dicts):
            logger.warning(
                f"VRDEvaluator: {len(predictions)} of the {len(dicts)} images of "
                f"{self._dataset_name} were evaluated; recall counts only their ground truth"
            )
        return gts, (complete if has_complete else None)

    def _zeroshot_counts(self):
        train = self._metadata.get("train_split", None)
        if not train or train == self._dataset_name:
            return None
        try:
            from vrd_d2.data import get_triplet_counts  # lazy: evaluation does not need data

            return get_triplet_counts(self._dataset_name)
        except Exception as e:  # training split not installed: report without zero-shot
            logger.warning(f"VRDEvaluator: no zero-shot recall (triplet counts of {train}: {e})")
            return None

    def _load_lu_ground_truth(self, predictions):
        names, records = load_lu_ground_truth(self._gt_mat, self._image_path_mat, self._zeroshot_mat)
        by_key = {image_key(n): r for n, r in zip(names, records)}
        gts = []
        for p in predictions:
            key = image_key(p.get("image_name") or p["file_name"])
            if key not in by_key:
                raise KeyError(
                    f"VRDEvaluator: image {p['file_name']!r} (image_id={p['image_id']}) is not in "
                    f"{self._image_path_mat} (gt.mat order)"
                )
            gts.append(by_key[key])
        if len(predictions) < len(names):
            logger.warning(
                f"VRDEvaluator: {len(predictions)} of the {len(names)} gt.mat images were evaluated"
            )
        return gts, None

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("VRDEvaluator: no predictions were processed")
            return {}
        return self.evaluate_predictions(predictions)

    def evaluate_predictions(self, predictions: List[dict]):
        """Score gathered per-image entries ``{"image_id", "file_name", "record"}`` (also used by
        tools/eval_results.py on results files). Returns the results dict."""
        seen = set()
        for p in predictions:
            if p["image_id"] in seen:
                raise ValueError(f"VRDEvaluator: image_id {p['image_id']} was processed twice")
            seen.add(p["image_id"])
        predictions = sorted(predictions, key=lambda p: str(p["image_id"]))

        num_objects = self._num_objects or len(self._metadata.get("thing_classes", [])) or None
        num_predicates = (
            self._num_predicates or len(self._metadata.get("predicate_classes", [])) or None
        )
        for p in predictions:
            where = p.get("where") or f"image_id={p['image_id']} ({p['file_name']})"
            validate_prediction(p["record"], where, num_objects, num_predicates)
        start = time.perf_counter()
        if self._gt_mat is not None:
            gts, complete = self._load_lu_ground_truth(predictions)
        else:
            gts, complete = self._load_dataset_ground_truth(predictions)
        results = evaluate_records(
            [p["record"] for p in predictions],
            gts,
            mode=self._mode,
            k_values=self._k_values,
            topk_values=self._topk_values,
            num_predicates=num_predicates,
            complete_ground_truths=complete,
            best_k=self._best_k,
            iou_threshold=self._iou_threshold,
            denominator=self._denominator,
        )
        elapsed = time.perf_counter() - start
        num_gt = sum(len(g["labels"]) for g in gts)
        logger.info(
            f"Relation recall on {self._dataset_name} ({len(predictions)} images, {num_gt} ground-"
            f"truth relations, ground truth from {self._gt_mat or 'dataset dicts'}, "
            f"k=0 is free k) in {elapsed:.2f}s:\n" + format_results_table(results)
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "vrd_evaluation.json"), "w") as f:
                json.dump(
                    {
                        "dataset": self._dataset_name,
                        "mode": self._mode,
                        "k_values": list(self._k_values),
                        "topk_values": list(self._topk_values),
                        "best_k": self._best_k,
                        "ground_truth": self._gt_mat or "dataset",
                        "denominator": self._denominator,
                        "iou_threshold": self._iou_threshold,
                        "num_images": len(predictions),
                        "num_gt_relations": num_gt,
                        "results": results,
                    },
                    f,
                    indent=2,
                )
            if self._save_predictions:
                write_results_json(
                    os.path.join(self._output_dir, "relations_results.json"),
                    predictions,
                    self._dataset_name,
                )
        return copy.deepcopy(results)
