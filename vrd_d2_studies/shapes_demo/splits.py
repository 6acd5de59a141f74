"""Subsets of the shapes splits that the demo registers on demand: the few images of ``--quick``
and the relation stages' first N training images of ``--relation-images``."""

from typing import Callable, List

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["QUICK_SIZES", "RELATION_IMAGES", "register_quick_subsets", "num_relation_images", "relation_train_split"]

QUICK_SIZES = {"train": 8, "val": 4, "test": 4}
# the relation stages' training images by default: 150 hold 7.2 relations per seen triplet, as scarce
# as in the paper's data (VRD: 4.5), where the prior helps the CP net; with all 1200 (46 per triplet)
# a rank-5 net learns what the prior counts and the prior costs it points (docs/RESULTS.md)
RELATION_IMAGES = 150


def _register_subset(name: str, source: str, load: Callable[[], List[dict]], train_split: str) -> None:
    """Register ``name`` (records from ``load``) with ``source``'s metadata, its own triplet
    counts (computed again from ``train_split``) and its name."""
    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(source).as_dict()
    for key in ("name", "triplet_counts"):
        meta.pop(key, None)
    meta["train_split"] = train_split
    MetadataCatalog.get(name).set(**meta)


def register_quick_subsets(prefix: str = "shapes_quick") -> str:
    """``<prefix>_{train,val,test}``: the first images of each shapes split (for --quick)."""
    for split, n in QUICK_SIZES.items():
        name = f"{prefix}_{split}"
        if name not in DatasetCatalog.list():
            source = f"shapes_{split}"
            _register_subset(name, source, lambda source=source, n=n: DatasetCatalog.get(source)[:n], f"{prefix}_train")
    return prefix


def num_relation_images(options) -> int:
    """How many training images the relation stages (2, 3) train on, 0 for all:
    ``options.relation_images``; when absent (None) :data:`RELATION_IMAGES`, or 0 with --quick."""
    n = getattr(options, "relation_images", None)
    if n is None:
        return 0 if options.quick else RELATION_IMAGES
    return int(n)


def relation_train_split(options) -> str:
    """The training split of the relation stages (2, 3), which their prior counts:
    ``<prefix>_train``, or with N = :func:`num_relation_images` > 0 its first N images
    (``<prefix>_train_first<N>``, registered here)."""
    base = f"{options.prefix}_train"
    n = num_relation_images(options)
    if not n:
        return base
    name = f"{base}_first{n}"
    if name not in DatasetCatalog.list():

        def load(base=base, n=n):
            dicts = DatasetCatalog.get(base)
            if len(dicts) < n:
                raise ValueError(f"shapes_demo: --relation-images {n}, but {base} has {len(dicts)} images")
            return dicts[:n]

        _register_subset(name, base, load, train_split=name)  # a training set: its prior counts itself
    return name
