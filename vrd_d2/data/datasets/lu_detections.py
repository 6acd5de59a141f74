"""Lu et al.'s R-CNN detections of the VRD test images as a dataset (boxes to relate, no relations)."""

import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .lu2016 import load_lu_detections

__all__ = ["register_lu_detections"]

logger = logging.getLogger(__name__)


def register_lu_detections(name: str, test_name: str, det_mat: str, image_path_mat: str) -> None:
    """Register ``name``: the images of ``test_name`` with Lu et al.'s R-CNN detections
    (``det_mat``, e.g. lu2016/data/objectDetRCNN.mat, matched to images by ``image_path_mat``) as
    their annotations: ``bbox`` XYXY_ABS, ``category_id`` 0-based, ``score`` = the detector's
    confidence; ``relations`` empty (int64 [0, 3]). Metadata is copied from ``test_name``, plus
    ``images_of`` = ``test_name``. A test
    image without detections gets none (counted and logged)."""

    def load():
        dets = load_lu_detections(det_mat, image_path_mat)
        dets = {os.path.splitext(k)[0]: v for k, v in dets.items()}
        out, missing = [], 0
        for d in DatasetCatalog.get(test_name):
            det = dets.get(os.path.splitext(os.path.basename(d["file_name"]))[0])
            if det is None:
                missing += 1
                det = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}
            r = {k: v for k, v in d.items() if k not in ("annotations", "relations")}
            r["annotations"] = [
                {"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c), "score": float(s)}
                for b, c, s in zip(det["boxes"], det["labels"], det["scores"])
            ]
            r["relations"] = np.zeros((0, 3), dtype=np.int64)
            out.append(r)
        if missing:
            logger.warning("%s: %d test images have no entry in %s (no detections)", name, missing, det_mat)
        return out

    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(test_name).as_dict()
    meta.pop("name")
    meta.pop("images_of", None)
    # images_of: its results may be scored against test_name's ground truth (tools/eval_results.py)
    MetadataCatalog.get(name).set(images_of=test_name, **meta)
