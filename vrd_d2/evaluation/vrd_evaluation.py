"""VRDEvaluator: relationship / phrase detection recall as a Detectron2 DatasetEvaluator, with
Lu et al.'s protocol (VRD), the Scene-Graph-Benchmark's (VG), or both from one pass. Protocols
and result names: docs/EVALUATION.md."""

import copy
import itertools
import json
import logging
import os
import time
from typing import List, Optional, Sequence

from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..config import MODES
from ..utils.safe_write import atomic_open
from .protocols import (
    evaluate_records,
    format_results_table,
    merge_protocols,
    resolve_protocol,
    tasks_for_mode,
)
from .recall import DENOMINATORS
from .results_io import (
    dataset_ground_truth,
    image_key,
    load_lu_ground_truth,
    relations_to_record,
    validate_prediction,
    write_results_json,
)
from .sgb import SGB_TOPK, evaluate_records_sgb, format_sgb_table, load_sgb_zeroshot_triplets, zeroshot_rows

__all__ = ["VRDEvaluator", "MODES", "tasks_for_mode", "evaluate_records", "format_results_table"]

logger = logging.getLogger(__name__)


class VRDEvaluator(DatasetEvaluator):
    """Recall of visual relationships with Lu et al.'s or the Scene-Graph-Benchmark's protocol.

    Reads ``outputs[i]["relations"]`` (DESIGN.md "Model output"). Lu: for each k of ``k_values``
    it keeps the rows with ``pair_rank < k`` (all rows for k = 0, free k), sorts them by score and
    takes the top K (K = 50, 100). SGB: graph constraint = the rows with ``pair_rank == 0``, no
    graph constraint = all rows, K = 20, 50, 100 (:mod:`.sgb`). "both": Lu's results and SGB's
    (prefixed ``sgb/``, :func:`~.protocols.merge_protocols`) from the same predictions. Ground
    truth comes from
    ``DatasetCatalog.get(dataset_name)`` matched by ``image_id``, or from Lu et al.'s gt.mat
    (matched by image file name) if ``gt_mat`` is given.
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
        topk_values: Optional[Sequence[int]] = None,
        best_k: Optional[int] = None,
        gt_mat: Optional[str] = None,
        image_path_mat: Optional[str] = None,
        zeroshot_mat: Optional[str] = None,
        iou_threshold: float = 0.5,
        denominator: str = "rows",
        save_predictions: bool = True,
        num_objects: Optional[int] = None,
        num_predicates: Optional[int] = None,
        protocol: str = "auto",
        sgb_zeroshot_triplets: Optional[str] = None,
        train_split: Optional[str] = None,
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
            topk_values: the K of R@K (predictions per image); default (50, 100) for Lu,
                (20, 50, 100) for SGB (each its own under "both").
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
            protocol: "lu", "sgb", "auto" (SGB for VG150 / VG200 datasets, Lu otherwise) or
                "both" (Lu's metrics, then SGB's as ``sgb/<metric>`` in the same task);
                ``k_values``, ``best_k`` and ``denominator`` are Lu's only.
            sgb_zeroshot_triplets: SGB's ``zeroshot_triplet.pytorch``: its triplets are the
                zero-shot rows of zR@K (default: training count 0, or zeroShot.mat).
            train_split: the registered split whose triplet counts make a triplet zero-shot
                (count 0), for a model trained on another split than the metadata's
                ``train_split`` (default); e.g. the shapes demo's relation stages.
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
        self._protocol = resolve_protocol(protocol, dataset_name)
        given = None if topk_values is None else tuple(int(k) for k in topk_values)
        self._topk_values = given or (SGB_TOPK if self._protocol == "sgb" else (50, 100))
        self._sgb_topk_values = given or SGB_TOPK
        self._sgb_zeroshot = load_sgb_zeroshot_triplets(sgb_zeroshot_triplets) if sgb_zeroshot_triplets else None
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
        self._train_split = train_split
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None, distributed=True):
        return {
            "dataset_name": dataset_name,
            "mode": cfg.MODEL.VRD.MODE,
            "output_dir": output_dir,
            "distributed": distributed,
            "k_values": tuple(cfg.MODEL.VRD.TEST.K_PER_PAIR),
            "protocol": cfg.MODEL.VRD.TEST.PROTOCOL,
            "sgb_zeroshot_triplets": cfg.MODEL.VRD.TEST.SGB_ZEROSHOT_TRIPLETS or None,
        }

    @property
    def protocol(self) -> str:
        """The resolved protocol, "lu", "sgb" or "both"."""
        return self._protocol

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
        # get_triplet_counts(name) counts name's metadata train_split; a given split counts itself
        train = self._train_split or self._metadata.get("train_split", None)
        if not train or train == self._dataset_name:
            return None
        try:
            from vrd_d2.data import get_triplet_counts  # lazy: evaluation does not need data

            return get_triplet_counts(train if self._train_split else self._dataset_name)
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
            logger.warning(f"VRDEvaluator: {len(predictions)} of the {len(names)} gt.mat images were evaluated")
        return gts, None

    def _score_sgb(self, records, gts, num_predicates):
        """SGB's metrics; zero-shot rows from the SGB list when given. Returns (results, table,
        per-task image counts)."""
        if self._sgb_zeroshot is not None:
            gts = [dict(g, zeroshot=zeroshot_rows(g["labels"], self._sgb_zeroshot)) for g in gts]
        results, counts = evaluate_records_sgb(
            records,
            gts,
            tasks_for_mode(self._mode),
            self._sgb_topk_values,
            num_predicates,
            self._iou_threshold,
        )
        c = next(iter(counts.values()))
        note = (
            f"(per-image means over {c['images']} images; left out as in SGB: "
            f"{c['skipped_no_gt']} without ground-truth relations, {c['skipped_no_pred']} "
            f"without predictions)"
        )
        return results, format_sgb_table(results) + "\n" + note, counts

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
        num_predicates = self._num_predicates or len(self._metadata.get("predicate_classes", [])) or None
        for p in predictions:
            where = p.get("where") or f"image_id={p['image_id']} ({p['file_name']})"
            validate_prediction(p["record"], where, num_objects, num_predicates)
        start = time.perf_counter()
        if self._gt_mat is not None:
            gts, complete = self._load_lu_ground_truth(predictions)
        else:
            gts, complete = self._load_dataset_ground_truth(predictions)
        records = [p["record"] for p in predictions]
        results, tables, counts = None, [], None
        if self._protocol in ("lu", "both"):
            results = evaluate_records(
                records,
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
            tables.append(format_results_table(results) + "\n(k=0 is free k)")
        if self._protocol in ("sgb", "both"):
            sgb, table, counts = self._score_sgb(records, gts, num_predicates)
            results = sgb if results is None else merge_protocols(results, sgb)
            tables.append(table)
        table = "\n".join(tables)
        elapsed = time.perf_counter() - start
        num_gt = sum(len(g["labels"]) for g in gts)
        logger.info(
            f"Relation recall ({self._protocol} protocol) on {self._dataset_name} ({len(predictions)} "
            f"images, {num_gt} ground-truth relations, ground truth from "
            f"{self._gt_mat or 'dataset dicts'}) in {elapsed:.2f}s:\n" + table
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with atomic_open(os.path.join(self._output_dir, "vrd_evaluation.json")) as f:  # whole or absent
                json.dump(
                    {
                        "dataset": self._dataset_name,
                        "protocol": self._protocol,
                        "sgb_images": counts,
                        "mode": self._mode,
                        "k_values": list(self._k_values),
                        "topk_values": list(self._topk_values),
                        "sgb_topk_values": list(self._sgb_topk_values) if counts else None,
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
