"""Relationship data: datasets (registered on import), triplet counts and the mapper."""

from . import datasets  # noqa: F401  (registers the builtin datasets)
from .datasets import (
    dump_vrd_json,
    load_lu_detections,
    load_lu_gt_mat,
    load_vg150,
    load_vrd_json,
    load_vrd_json_file,
    register_all_vrd,
    register_vg150,
    register_vg200,
    register_vrd_json,
    register_vrd_split,
)
from .mapper import VRDDatasetMapper, filter_images_without_relations, remap_relations
from .samplers import ResumableTrainingSampler, find_resumable_sampler
from .triplet_counts import compute_triplet_counts, get_triplet_counts, triplet_counts_from_config

__all__ = [k for k in globals().keys() if not k.startswith("_")]
