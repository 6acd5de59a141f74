"""The relation-aware DatasetMapper.

Adds to detectron2's DatasetMapper output ``relations``: LongTensor [M,3] of (subject row, object
row, predicate) into ``instances`` (gt_boxes, gt_classes), kept aligned through augmentation:
instances that become empty (e.g. cropped away) are removed, relation indices are remapped and
relations that lost a box are dropped and counted (``num_relations_dropped`` in the output and
``self.num_relations_dropped`` in total). A horizontal flip swaps predicates through
``flip_predicate_map`` (left of <-> right of) and is refused without one.
"""

import copy
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.logger import log_every_n_seconds

from ..config import resolve_pair_features

logger = logging.getLogger(__name__)

__all__ = ["VRDDatasetMapper", "filter_images_without_relations", "needs_image", "remap_relations"]


def remap_relations(relations: np.ndarray, keep: np.ndarray):
    """Re-index relations after keeping ``keep`` (bool [N]) of N instances.

    Returns (relations [M',3] int64 into the kept rows, number of dropped relations).
    """
    relations = np.asarray(relations, dtype=np.int64).reshape(-1, 3)
    new_index = np.full(len(keep), -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    if len(relations) == 0:
        return relations, 0
    s, o = new_index[relations[:, 0]], new_index[relations[:, 1]]
    ok = (s >= 0) & (o >= 0)
    out = np.stack([s[ok], o[ok], relations[ok, 2]], axis=1)
    return out, int((~ok).sum())


def _is_hflip(aug) -> bool:
    if isinstance(aug, T.HFlipTransform):
        return True
    return isinstance(aug, T.RandomFlip) and aug.horizontal


def _is_vflip(aug) -> bool:
    if isinstance(aug, T.VFlipTransform):
        return True
    return isinstance(aug, T.RandomFlip) and aug.vertical


def _count_hflips(transforms) -> int:
    ts = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    return sum(isinstance(t, T.HFlipTransform) for t in ts)


def filter_images_without_relations(dataset_dicts: List[dict], min_boxes: int = 2) -> List[dict]:
    """Drop training images with no relation or fewer than ``min_boxes`` boxes (logged counts)."""
    no_rel = sum(1 for d in dataset_dicts if len(d.get("relations", ())) == 0)
    few = sum(1 for d in dataset_dicts if len(d.get("relations", ())) > 0 and len(d.get("annotations", ())) < min_boxes)
    kept = [d for d in dataset_dicts if len(d.get("relations", ())) > 0 and len(d.get("annotations", ())) >= min_boxes]
    logger.info(
        f"Removed {no_rel} images without relations and {few} images with relations but "
        f"fewer than {min_boxes} boxes. {len(kept)} of {len(dataset_dicts)} images left."
    )
    return kept


def needs_image(cfg, is_train: bool) -> bool:
    """Whether a run of ``cfg`` reads pixels: not the geometry-only relation head on given boxes
    (relation stages in training; the gold-box modes at test)."""
    vrd = cfg.MODEL.get("VRD", None)
    if vrd is None or resolve_pair_features(cfg) != "geometry" or vrd.TRAIN_ON_PROPOSALS:
        return True
    if is_train:
        return vrd.TRAIN_STAGE == "detector"
    return vrd.MODE == "sgdet"


class VRDDatasetMapper(DatasetMapper):
    """DatasetMapper that also maps ``relations`` (and ``relations_complete`` if present).

    Ground truth (``instances``, ``relations``) is also produced at inference when the record has
    annotations, so a gold-box mode (predcls) can use it; the evaluator reads its ground truth from
    the DatasetCatalog records, not from here.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List,
        image_format: str,
        flip_predicate_map: Optional[Dict[int, int]] = None,
        dataset_names: Sequence[str] = (),
        keep_gt_at_inference: bool = True,
        load_image: bool = True,
    ):
        """
        Args:
            is_train, augmentations, image_format: as in detectron2's DatasetMapper.
            flip_predicate_map: predicate id -> id after a horizontal flip (identity for
                flip-invariant predicates). Required if ``augmentations`` can flip horizontally.
            dataset_names: used in error messages only.
            keep_gt_at_inference: also output ``instances``/``relations`` when not training.
            load_image: read the image. False for the geometry-only head on given boxes, which
                needs no pixels: then no augmentation is applied, boxes stay in original image
                coordinates and the output has no ``image``.
        """
        names = ", ".join(dataset_names) or "this dataset"
        for aug in augmentations:
            if _is_vflip(aug):
                raise ValueError(
                    f"VRDDatasetMapper: vertical flip is not supported (it would "
                    f"change above/below, on/under) for {names}"
                )
            if _is_hflip(aug) and flip_predicate_map is None:
                raise ValueError(
                    f"VRDDatasetMapper: horizontal flip requested ({aug}) but {names} has no "
                    f"flip_predicate_map in its metadata, so predicates such as 'left of' would "
                    f"become wrong. Set INPUT.RANDOM_FLIP='none' or give the dataset a map."
                )
        super().__init__(is_train, augmentations=augmentations, image_format=image_format)
        self.flip_lut = None
        if flip_predicate_map is not None:
            n = max(max(flip_predicate_map), max(flip_predicate_map.values())) + 1
            lut = np.arange(n, dtype=np.int64)
            for a, b in flip_predicate_map.items():
                lut[int(a)] = int(b)
            self.flip_lut = lut
        self.keep_gt_at_inference = keep_gt_at_inference
        self.load_image = load_image
        self.num_relations_dropped = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augs = utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        names = list(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
        maps = [MetadataCatalog.get(n).get("flip_predicate_map", None) for n in names]
        flip_map = maps[0] if maps else None
        if any(m is None for m in maps):
            flip_map = None
        elif any(m != flip_map for m in maps):
            raise ValueError(
                f"VRDDatasetMapper: datasets {names} have different "
                f"flip_predicate_map values; train them separately"
            )
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "flip_predicate_map": flip_map,
            "dataset_names": names,
            "load_image": needs_image(cfg, is_train),
        }

    def _map_relations(self, key, dataset_dict, keep, n_flips):
        rel = dataset_dict.pop(key, None)
        if rel is None:
            return 0
        rel, dropped = remap_relations(rel, keep)
        if n_flips % 2 == 1 and len(rel):
            if self.flip_lut is None:  # a HFlipTransform came from outside the checked list
                raise ValueError(
                    "VRDDatasetMapper: a horizontal flip was applied but there is " "no flip_predicate_map"
                )
            rel = rel.copy()
            rel[:, 2] = self.flip_lut[rel[:, 2]]
        dataset_dict[key] = torch.as_tensor(rel, dtype=torch.long).reshape(-1, 3)
        return dropped

    def __call__(self, dataset_dict):
        """
        Returns:
            dict with ``image`` (uint8 Tensor[3,H,W]; absent when ``load_image`` is False),
            ``height``/``width`` (original size),
            and, when ground truth is produced, ``instances`` (gt_boxes, gt_classes),
            ``relations`` LongTensor[M,3] into ``instances``, ``num_relations_dropped`` (int).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        if self.load_image:
            transforms, image_shape = self._read_and_augment(dataset_dict)
        else:
            transforms, image_shape = T.TransformList([]), (dataset_dict["height"], dataset_dict["width"])
        with_gt = "annotations" in dataset_dict and (self.is_train or self.keep_gt_at_inference)
        return self._gt_from_annotations(dataset_dict, with_gt, transforms, image_shape)

    def _read_and_augment(self, dataset_dict):
        """Read the image into ``dataset_dict["image"]``; returns (transforms, augmented (h, w))."""
        file_name = dataset_dict["file_name"]
        if not os.path.isfile(file_name):
            raise FileNotFoundError(
                f"VRDDatasetMapper: image file not found: {file_name} " f"(image_id {dataset_dict.get('image_id')})"
            )
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise OSError(f"VRDDatasetMapper: cannot read image {file_name}: " f"{type(e).__name__}: {e}") from e
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return transforms, image_shape

    def _gt_from_annotations(self, dataset_dict, with_gt, transforms, image_shape):
        file_name = dataset_dict["file_name"]
        if not with_gt:
            for key in ("annotations", "relations", "relations_complete"):
                dataset_dict.pop(key, None)
            return dataset_dict
        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in dataset_dict.pop("annotations")
        ]
        instances = utils.annotations_to_instances(annos, image_shape)
        if annos and all("score" in a for a in annos):  # boxes from a detector: P(b) per box
            instances.gt_scores = torch.tensor([float(a["score"]) for a in annos], dtype=torch.float32)
        # the same rule as detectron2's filter_empty_instances, but we need the mask
        keep = instances.gt_boxes.nonempty(threshold=1e-5).numpy()
        dataset_dict["instances"] = instances[torch.from_numpy(keep)]
        n_flips = _count_hflips(transforms)
        dropped = self._map_relations("relations", dataset_dict, keep, n_flips)
        self._map_relations("relations_complete", dataset_dict, keep, n_flips)
        dataset_dict["num_relations_dropped"] = dropped
        if dropped:
            self.num_relations_dropped += dropped
            log_every_n_seconds(
                logging.INFO,
                f"VRDDatasetMapper: {self.num_relations_dropped} relations dropped "
                f"so far because augmentation removed their boxes (last: {file_name})",
                n=60,
                name=__name__,
            )
        return dataset_dict
