"""Training triplet counts n(s, p, o): the data behind the prior psi_u and the zero-shot split."""

import logging
from typing import Iterable, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

__all__ = ["compute_triplet_counts", "get_triplet_counts", "triplet_counts_from_config"]


def compute_triplet_counts(dataset_dicts: Iterable[dict], num_objects: int, num_predicates: int) -> np.ndarray:
    """Count annotated (subject class, predicate, object class) triplets.

    Args:
        dataset_dicts: relation records (``annotations`` and deduplicated ``relations`` [M,3]).
    Returns:
        int64 array [S, P, O] with S = O = num_objects, P = num_predicates.
    """
    counts = np.zeros((num_objects, num_predicates, num_objects), dtype=np.int64)
    for d in dataset_dicts:
        rel = np.asarray(d.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        if len(rel) == 0:
            continue
        cats = np.array([a["category_id"] for a in d["annotations"]], dtype=np.int64)
        np.add.at(counts, (cats[rel[:, 0]], rel[:, 2], cats[rel[:, 1]]), 1)
    return counts


def get_triplet_counts(name: str) -> np.ndarray:
    """Triplet counts [S,P,O] int64 of the training split behind dataset ``name``.

    The training split is ``MetadataCatalog.get(name).train_split`` (itself for a training set).
    Computed once, then cached as ``triplet_counts`` in the training split's metadata (and in
    ``name``'s). Do not modify the returned array.
    """
    md = MetadataCatalog.get(name)
    train = md.get("train_split", name)
    tmd = MetadataCatalog.get(train)
    counts = tmd.get("triplet_counts", None)
    if counts is None:
        if tmd.get("thing_classes", None) is None and train in DatasetCatalog.list():
            # the class lists could not be read at registration (missing or malformed file):
            # loading the split raises the loader's error, which names the file
            DatasetCatalog.get(train)
            tmd = MetadataCatalog.get(train)
        for key in ("thing_classes", "predicate_classes"):
            if tmd.get(key, None) is None:
                raise KeyError(
                    f"get_triplet_counts({name!r}): metadata of training split "
                    f"{train!r} has no {key!r} (is the dataset installed?)"
                )
        counts = compute_triplet_counts(DatasetCatalog.get(train), len(tmd.thing_classes), len(tmd.predicate_classes))
        counts.setflags(write=False)
        tmd.set(triplet_counts=counts)
        logger.info(
            f"Triplet counts of {train}: {int(counts.sum())} relations, " f"{int((counts > 0).sum())} distinct triplets"
        )
    if name != train and md.get("triplet_counts", None) is None:
        md.set(triplet_counts=counts)
    return counts


def triplet_counts_from_config(cfg) -> Optional[torch.Tensor]:
    """The counts a model built from ``cfg`` gives its prior psi_u: those of the first training
    dataset (float32 Tensor[S, P, S], a copy), or None without the prior (MODEL.VRD.USE_PRIOR
    False) or without a training dataset. A shape other than (MODEL.ROI_HEADS.NUM_CLASSES,
    MODEL.VRD.NUM_PREDICATES, NUM_CLASSES) is a ValueError naming the dataset."""
    v = cfg.MODEL.VRD
    if not (v.USE_PRIOR and len(cfg.DATASETS.TRAIN)):
        return None
    s, p = cfg.MODEL.ROI_HEADS.NUM_CLASSES, v.NUM_PREDICATES
    name = cfg.DATASETS.TRAIN[0]
    counts = get_triplet_counts(name)
    if tuple(counts.shape) != (s, p, s):
        raise ValueError(
            f"vrd_d2/data/triplet_counts.py: get_triplet_counts({name!r}) has shape {tuple(counts.shape)}, "
            f"the config expects (MODEL.ROI_HEADS.NUM_CLASSES, MODEL.VRD.NUM_PREDICATES, "
            f"NUM_CLASSES) = {(s, p, s)}"
        )
    return torch.tensor(counts, dtype=torch.float32)  # a copy: the cached counts stay read-only
