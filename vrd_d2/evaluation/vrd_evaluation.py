"""VRDEvaluator: relationship / phrase detection recall as a Detectron2 DatasetEvaluator, with a
registered protocol (Lu et al.'s, the Scene-Graph-Benchmark's, :mod:`.protocols`) or several from
one pass. Protocols and result names: docs/EVALUATION.md."""

import copy
import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import List, Optional, Sequence

from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation import print_csv_format as _d2_print_csv_format
from detectron2.utils import comm

from ..config import MODES
from ..utils.checks import check_float, check_int
from ..utils.safe_write import atomic_open
from .protocols import (
    build_protocols,
    evaluate_records,
    format_protocol_table,
    format_results_table,
    resolve_protocol,
    tasks_for_mode,
)
from .recall import DENOMINATORS, missing_image_record
from .results_io import (
    dataset_ground_truth,
    image_key,
    load_lu_ground_truth,
    relations_to_record,
    validate_prediction,
    write_results_json,
)

__all__ = ["VRDEvaluator", "MODES", "tasks_for_mode", "evaluate_records", "format_results_table", "print_csv_format"]

logger = logging.getLogger(__name__)


def print_csv_format(results):
    """detectron2's ``print_csv_format`` (task -> metric -> value), which also takes the results of
    several protocols (``{"lu": {task: ...}, "sgb": {task: ...}}``), printed as tasks
    ``<protocol>/<task>``. ``vrd_d2.engine.trainer`` gives it to ``DefaultTrainer.test``."""
    nested = bool(results) and all(
        isinstance(res, Mapping) and res and all(isinstance(m, Mapping) for m in res.values())
        for res in results.values()
    )
    if nested:
        results = OrderedDict((f"{p}/{task}", m) for p, res in results.items() for task, m in res.items())
    _d2_print_csv_format(results)


class VRDEvaluator(DatasetEvaluator):
    """Recall of visual relationships with a protocol of ``VRD_PROTOCOL_REGISTRY``.

    Reads ``outputs[i]["relations"]`` (DESIGN.md "Model output"). Lu: for each k of ``k_values``
    it keeps the rows with ``pair_rank < k`` (all rows for k = 0, free k), sorts them by score and
    takes the top K (K = 50, 100). SGB: graph constraint = the rows with ``pair_rank == 0``, no
    graph constraint = all rows, K = 20, 50, 100 (:mod:`.sgb`). One protocol's results are
    task -> metric -> value; "both" returns ``{"lu": Lu's results, "sgb": SGB's}`` from the same
    predictions. Ground truth comes from ``DatasetCatalog.get(dataset_name)`` matched by
    ``image_id``, or from Lu et al.'s gt.mat (matched by image file name) if ``gt_mat`` is given.
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
        only_present_images: bool = False,
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
            protocol: a registered protocol ("lu", "sgb", ...), "auto" (the dataset's metadata
                ``evaluation_protocol``, set at registration: Lu for VRD and custom JSON, SGB
                for VG150 / VG200; Lu when the metadata has none) or "both" (Lu's results and
                SGB's, each under its name); ``k_values``, ``best_k`` and ``denominator`` are
                Lu's only.
            sgb_zeroshot_triplets: SGB's ``zeroshot_triplet.pytorch``: its triplets are the
                zero-shot rows of zR@K (default: training count 0, or zeroShot.mat).
            train_split: the registered split whose triplet counts make a triplet zero-shot
                (count 0), for a model trained on another split than the metadata's
                ``train_split`` (default); e.g. the shapes demo's relation stages.
            only_present_images: score only the images that have predictions. Default False:
                an image of the ground truth without predictions counts as a miss of all its
                relations (Lu's protocol divides by every ground-truth row of the split) and the
                count is reported as ``missing_images`` (log, ``vrd_evaluation.json``,
                :attr:`missing_images`).
        """
        where = "VRDEvaluator"
        if mode not in MODES:
            raise ValueError(f"VRDEvaluator: mode must be one of {MODES}, got {mode!r}")
        if denominator not in DENOMINATORS:
            raise ValueError(f"VRDEvaluator: denominator must be one of {DENOMINATORS}")
        if not k_values:
            raise ValueError(f"VRDEvaluator: k_values must be >= 0 (0 = free k), got {k_values}")
        k_values = [check_int(k, "k_values (0 = free k)", low=0, where=where) for k in k_values]
        if topk_values is not None:
            if not len(topk_values):
                raise ValueError(f"{where}: topk_values must hold at least one K >= 1, found {topk_values!r}")
            topk_values = [check_int(k, "topk_values (the K of R@K)", low=1, where=where) for k in topk_values]
        iou_threshold = check_float(iou_threshold, "iou_threshold", low=0.0, high=1.0, where=where)
        if iou_threshold == 0.0:  # every box would hit every box
            raise ValueError(f"{where}: iou_threshold must be in (0, 1], found 0.0")
        if best_k is not None:
            best_k = check_int(best_k, "best_k", low=0, where=where)
        for name, size in (("num_objects", num_objects), ("num_predicates", num_predicates)):
            if size is not None:
                check_int(size, name, low=1, where=where)
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._mode = mode
        self._output_dir = output_dir
        self._distributed = distributed
        self._k_values = tuple(int(k) for k in k_values)
        self._protocol = resolve_protocol(protocol, self._metadata)
        self._protocols = build_protocols(
            self._protocol,
            mode=mode,
            k_values=self._k_values,
            topk_values=topk_values,
            best_k=best_k,
            iou_threshold=iou_threshold,
            denominator=denominator,
            sgb_zeroshot_triplets=sgb_zeroshot_triplets,
        )
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
        self._only_present_images = bool(only_present_images)
        #: images of the ground truth without predictions in the last evaluation
        self.missing_images = 0
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
        """The resolved protocol: a registered name ("lu", "sgb", ...) or "both"."""
        return self._protocol

    @property
    def protocols(self):
        """name -> the protocol instances this evaluator runs (one, or Lu's and SGB's for "both")."""
        return self._protocols

    def format_results(self, results) -> str:
        """The printable table of ``results`` returned by this evaluator."""
        return format_protocol_table(results, self._protocols.values())

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
        """(ground truth per prediction, complete ground truth or None)."""
        return self._dataset_truth_and_missing(predictions)[:2]

    def _dataset_truth_and_missing(self, predictions):
        """:meth:`_load_dataset_ground_truth` plus [(gt, complete gt)] of the images without one."""
        dicts = DatasetCatalog.get(self._dataset_name)
        by_id = {}
        for d in dicts:
            if d["image_id"] in by_id:
                raise ValueError(f"{self._dataset_name}: image_id {d['image_id']} appears twice")
            by_id[d["image_id"]] = d
        for p in predictions:  # every check before the work
            if p["image_id"] not in by_id:
                raise KeyError(
                    f"VRDEvaluator: prediction for image_id={p['image_id']} ({p['file_name']}) "
                    f"but {self._dataset_name} has no such image"
                )
        counts = self._zeroshot_counts()
        has_complete = any("relations_complete" in d for d in dicts)

        def truth(d):
            key = "relations_complete" if "relations_complete" in d else "relations"
            return dataset_ground_truth(d, "relations", counts), (
                dataset_ground_truth(d, key, None) if has_complete else None
            )

        present = [truth(by_id[p["image_id"]]) for p in predictions]
        seen = {p["image_id"] for p in predictions}
        missing = [truth(d) for d in dicts if d["image_id"] not in seen]
        return [g for g, _ in present], ([c for _, c in present] if has_complete else None), missing

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
        keys = []
        for p in predictions:
            key = image_key(p.get("image_name") or p["file_name"])
            if key not in by_key:
                raise KeyError(
                    f"VRDEvaluator: image {p['file_name']!r} (image_id={p['image_id']}) is not in "
                    f"{self._image_path_mat} (gt.mat order)"
                )
            keys.append(key)
        seen = set(keys)
        missing = [(r, None) for n, r in zip(names, records) if image_key(n) not in seen]
        return [by_key[k] for k in keys], None, missing

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
            gts, complete, missing = self._load_lu_ground_truth(predictions)
        else:
            gts, complete, missing = self._dataset_truth_and_missing(predictions)
        records = [p["record"] for p in predictions]
        self.missing_images = len(missing)
        if missing:
            logger.warning(
                f"VRDEvaluator: missing_images={len(missing)}: {len(missing)} of the {len(predictions) + len(missing)} "
                f"images of {self._gt_mat or self._dataset_name} have no predictions; "
                + (
                    f"scoring only the {len(predictions)} present (only_present_images)"
                    if self._only_present_images
                    else "every relation of theirs counts as a miss (only_present_images=True / "
                    "--only-present-images scores the present ones only)"
                )
            )
            if not self._only_present_images:
                records += [missing_image_record() for _ in missing]
                gts = gts + [g for g, _ in missing]
                if complete is not None:
                    complete = complete + [c for _, c in missing]
        runs = OrderedDict(
            (name, protocol.evaluate(records, gts, complete_ground_truths=complete, num_predicates=num_predicates))
            for name, protocol in self._protocols.items()
        )
        if len(runs) == 1:
            results = next(iter(runs.values())).results
        else:
            results = OrderedDict((name, run.results) for name, run in runs.items())
        table = "\n".join(
            self._protocols[name].table(run.results) + (f"\n{run.notes}" if run.notes else "")
            for name, run in runs.items()
        )
        elapsed = time.perf_counter() - start
        num_gt = sum(len(g["labels"]) for g in gts)
        logger.info(
            f"Relation recall ({self._protocol} protocol) on {self._dataset_name} ({len(gts)} "
            f"images, {self.missing_images} of them without predictions ("
            f"{'left out' if self._only_present_images else 'counted as misses'}), {num_gt} "
            f"ground-truth relations, ground truth from "
            f"{self._gt_mat or 'dataset dicts'}) in {elapsed:.2f}s:\n" + table
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            saved = {"dataset": self._dataset_name, "protocol": self._protocol, "mode": self._mode}
            for name, run in runs.items():  # each protocol's options and run facts
                saved.update(self._protocols[name].settings())
                saved.update(run.record)
            saved.update(
                ground_truth=self._gt_mat or "dataset",
                iou_threshold=self._iou_threshold,
                num_images=len(gts),
                missing_images=self.missing_images,
                only_present_images=self._only_present_images,
                num_gt_relations=num_gt,
                results=results,
            )
            with atomic_open(os.path.join(self._output_dir, "vrd_evaluation.json")) as f:  # whole or absent
                json.dump(saved, f, indent=2)
            if self._save_predictions:
                write_results_json(
                    os.path.join(self._output_dir, "relations_results.json"),
                    predictions,
                    self._dataset_name,
                )
        return copy.deepcopy(results)
