"""A validation split held out of a training split: the images on which hyperparameters are chosen.

VRD (and VG200) ship a train and a test split only. Whatever is chosen on data — the free k of the
paper's Table 1 (cross-validated), the weights of a smoothed prior, a logit-adjustment temperature —
must be chosen on images the model was not trained on and that are not the test set. This module
carves such a split out of a registered training split:

* the records of ``<base>`` are ordered by their ``image_id`` (a total order that does not depend
  on the file's order), shuffled by ``numpy.random.RandomState(seed)``, and the first
  ``round(fraction * N)`` form the held-out split, the rest the fitting split;
* ``<fit_name>`` and ``<val_name>`` are registered with ``<base>``'s class lists; both name the
  fitting split as their ``train_split``, so the prior psi_u and the zero-shot triplets of the
  held-out images come from the fitting images only (a held-out triplet unseen in the fitting
  images is zero-shot there).

The builtin splits (``register_all_builtin``) are ``vrd_train_fit`` / ``vrd_val`` and
``vg200_train_fit`` / ``vg200_val``: :data:`DEFAULT_FRACTION` of the images, seed
:data:`DEFAULT_SEED`. VG150 has its own ``vg150_val``.
"""

import logging
from typing import List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["DEFAULT_FRACTION", "DEFAULT_SEED", "split_holdout", "register_holdout_split"]

logger = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.1
DEFAULT_SEED = 0
# Metadata a derived split takes from its base (the rest, file names and split names, is its own).
_INHERITED = ("thing_classes", "predicate_classes", "flip_predicate_map", "evaluator_type", "evaluation_protocol")


def _sort_key(record: dict, where: str, index: int):
    if "image_id" not in record:
        raise ValueError(f"{where}: record {index} has no 'image_id'; a held-out split needs one per image")
    image_id = record["image_id"]
    # ints before strings, so that a mixed list still has one order
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))


def split_holdout(
    records: Sequence[dict], fraction: float = DEFAULT_FRACTION, seed: int = DEFAULT_SEED, where: str = "records"
) -> Tuple[List[dict], List[dict]]:
    """Split ``records`` into (fit, held_out), a seeded partition by image.

    Args:
        records: Detectron2 dataset dicts, each with a unique ``image_id``.
        fraction: share of the images held out, 0 < fraction < 1; ``round(fraction * N)`` images,
            at least 1 and at most N - 1.
        seed: the permutation's seed.
        where: names the records in errors (the dataset name).
    Returns:
        (fit, held_out): two lists of the same record objects, each in ``records``' order.
    """
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"{where}: held-out fraction must be a number in (0, 1), got {fraction!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{where}: held-out seed must be a non-negative integer, got {seed!r}")
    n = len(records)
    if n < 2:
        raise ValueError(f"{where}: {n} image(s); a held-out split needs at least 2")
    keys = [_sort_key(r, where, i) for i, r in enumerate(records)]
    if len(set(keys)) != n:
        seen = {}
        for i, k in enumerate(keys):
            if k in seen:
                raise ValueError(f"{where}: records {seen[k]} and {i} share image_id {records[i]['image_id']!r}")
            seen[k] = i
    order = sorted(range(n), key=keys.__getitem__)
    perm = np.random.RandomState(int(seed)).permutation(n)
    n_held = min(max(int(round(float(fraction) * n)), 1), n - 1)
    held = {order[i] for i in perm[:n_held]}
    fit = [r for i, r in enumerate(records) if i not in held]
    held_out = [r for i, r in enumerate(records) if i in held]
    return fit, held_out


def register_holdout_split(
    base: str, fit_name: str, val_name: str, fraction: float = DEFAULT_FRACTION, seed: int = DEFAULT_SEED
) -> None:
    """Register ``fit_name`` and ``val_name``: :func:`split_holdout` of the registered ``base``.

    Loading either loads ``base`` (its checks and its summary line) and splits it; nothing is read
    at registration. The metadata records ``holdout_of``, ``holdout_fraction`` and ``holdout_seed``
    so a table can say which split chose its settings.
    """
    split_holdout([{"image_id": 0}, {"image_id": 1}], fraction, seed, where=base)  # argument checks now

    def load(part: int, name: str) -> List[dict]:
        records = split_holdout(DatasetCatalog.get(base), fraction, seed, where=base)[part]
        logger.info(
            f"{name}: {len(records)} images of {base} (held-out fraction {fraction}, seed {seed}; "
            f"{'held out' if part else 'the rest'})"
        )
        return records

    base_md = MetadataCatalog.get(base)
    for part, name in ((0, fit_name), (1, val_name)):
        DatasetCatalog.register(name, lambda part=part, name=name: load(part, name))
        md = MetadataCatalog.get(name)
        for key in _INHERITED:
            if base_md.get(key, None) is not None or key == "flip_predicate_map":
                md.set(**{key: base_md.get(key, None)})
        md.set(
            train_split=fit_name,
            holdout_of=base,
            holdout_fraction=float(fraction),
            holdout_seed=int(seed),
            split="train" if part == 0 else "val",
        )
        for key in ("image_root", "root", "json_file"):
            if base_md.get(key, None) is not None:
                md.set(**{key: base_md.get(key)})
