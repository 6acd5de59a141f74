"""What a vrd_d2 checkpoint says about itself: its class and predicate names and its config.

Every checkpoint vrd_d2 training writes holds, besides the weights, ``thing_classes`` and
``predicate_classes`` (lists of str, id = position, as in the datasets' metadata) and ``config``
(``cfg.dump()``, a YAML string): plain entries that ``torch.load(weights_only=True)`` reads. A user
with the weights and a config file and no dataset therefore gets named outputs
(:func:`resolve_class_names`); when a registered dataset of the config has names too, the two must
agree, or it is an error naming the first difference, the checkpoint and the dataset's files.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog

from .utils.safe_write import dataset_files

__all__ = [
    "NAME_KEYS",
    "checkpoint_info",
    "checkpoint_class_names",
    "dataset_class_names",
    "resolve_class_names",
    "fill_dataset_class_names",
]

logger = logging.getLogger(__name__)

NAME_KEYS = ("thing_classes", "predicate_classes")
# files that hold a builtin dataset's names (VRD's lists, VG150's dicts); a user's vrd json holds its own
_NAME_FILES = ("objects.json", "predicates.json", "VG-SGG-dicts-with-attri.json")


def _metadata_names(dataset: str) -> Optional[Dict[str, List[str]]]:
    md = MetadataCatalog.get(dataset)
    names = {k: md.get(k, None) for k in NAME_KEYS}
    if any(v is None for v in names.values()):
        return None
    return {k: [str(n) for n in v] for k, v in names.items()}


def _name_files(dataset: str) -> str:
    md = MetadataCatalog.get(dataset)
    files = [f for f in dataset_files(md) if os.path.basename(f) in _NAME_FILES]
    if not files and isinstance(md.get("json_file", None), str):
        files = [md.json_file]
    return ", ".join(files) if files else "no file (names set in Python)"


def dataset_class_names(datasets: Sequence[str]) -> Optional[Dict[str, List[str]]]:
    """``{"thing_classes", "predicate_classes", "dataset"}`` of the first of ``datasets`` whose
    metadata has both lists (None if none has): registered datasets without their files have none."""
    for name in datasets:
        names = _metadata_names(name)
        if names is not None:
            return dict(names, dataset=name)
    return None


def checkpoint_info(cfg) -> dict:
    """The entries every checkpoint of a run with ``cfg`` carries: ``config`` (``cfg.dump()``) and,
    when a dataset of DATASETS.TRAIN / TEST has them, ``thing_classes`` and ``predicate_classes``."""
    info = {"config": cfg.dump()}
    names = dataset_class_names(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if names is None:
        logger.warning("checkpoints of this run carry no class names: no dataset of DATASETS.TRAIN/TEST has them")
    else:
        info.update({k: names[k] for k in NAME_KEYS})
    return info


def checkpoint_class_names(extras: Optional[dict], weights: str) -> Optional[Dict[str, List[str]]]:
    """The names a loaded checkpoint carries (``extras``: what ``VRDCheckpointer.load`` returns),
    None for a checkpoint without them (another writer, or vrd_d2 before it wrote them).

    Raises:
        ValueError: naming ``weights`` and the key, when an entry is not a list of strings or only
            one of the two lists is present.
    """
    extras = extras or {}
    present = [k for k in NAME_KEYS if k in extras]
    if not present:
        return None
    if len(present) != len(NAME_KEYS):
        raise ValueError(f"checkpoint {weights}: holds {present[0]} but not {set(NAME_KEYS) - set(present)}")
    for key in NAME_KEYS:
        value = extras[key]
        if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
            raise ValueError(f"checkpoint {weights}: entry {key!r} must be a list of names, found {value!r:.80}")
    return {k: list(extras[k]) for k in NAME_KEYS}


def _first_difference(a: Sequence[str], b: Sequence[str]) -> Optional[str]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"[{i}] is {x!r} in the checkpoint and {y!r} in the dataset"
    if len(a) != len(b):
        return f"the checkpoint has {len(a)} names and the dataset {len(b)}"
    return None


def check_names_agree(ckpt: Dict[str, List[str]], weights: str, dataset: str) -> None:
    """ValueError naming both files and the first difference when ``dataset``'s names differ from
    the checkpoint's (a dataset without names agrees with anything)."""
    names = _metadata_names(dataset)
    if names is None:
        return
    for key in NAME_KEYS:
        diff = _first_difference(ckpt[key], names[key])
        if diff is not None:
            raise ValueError(
                f"the class names of checkpoint {weights} and of dataset {dataset!r} ({_name_files(dataset)}) "
                f"differ: {key}{diff}. The weights were trained on another label space: use the dataset they "
                f"were trained on, or leave it out (DATASETS.TRAIN/TEST) to use the checkpoint's names"
            )


def resolve_class_names(cfg, extras: Optional[dict], weights: str) -> Optional[Dict[str, List[str]]]:
    """
    The ``thing_classes`` and ``predicate_classes`` to name a model's outputs with: the checkpoint's
    when it has them, else those of the first dataset of DATASETS.TEST / TRAIN that has them;
    None when neither does.

    Raises:
        ValueError: a registered dataset of the config has names that differ from the
            checkpoint's (naming both, the first difference and the files).
    """
    datasets = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    ckpt = checkpoint_class_names(extras, weights)
    if ckpt is None:
        names = dataset_class_names(datasets)
        return None if names is None else {k: names[k] for k in NAME_KEYS}
    for dataset in datasets:
        check_names_agree(ckpt, weights, dataset)
    return ckpt


def fill_dataset_class_names(datasets: Sequence[str], extras: Optional[dict], weights: str) -> None:
    """Evaluation from a checkpoint: each of ``datasets`` whose metadata has no names gets the
    checkpoint's (logged); one with names must agree (ValueError as :func:`check_names_agree`)."""
    ckpt = checkpoint_class_names(extras, weights)
    if ckpt is None:
        return
    for dataset in datasets:
        if _metadata_names(dataset) is None:
            md = MetadataCatalog.get(dataset)
            for key in NAME_KEYS:
                if md.get(key, None) is None:
                    md.set(**{key: ckpt[key]})
            logger.info(f"dataset {dataset}: class and predicate names taken from checkpoint {weights}")
        else:
            check_names_agree(ckpt, weights, dataset)
