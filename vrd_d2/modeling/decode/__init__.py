"""Exact top-K decoding of the CP triplet distribution (pure torch), one module per step:

* :mod:`.api`: the public decoders and :class:`DecodeStats`;
* :mod:`.checks`: the argument checks they share;
* :mod:`.common`: memory budgets, pair chunks, exact scoring of listed triplets;
* :mod:`.prior_tables`: the prior's lookup tables, indexed by (subject, object) cell, cached;
* :mod:`.bounds`: the certified lower bound tau and the pairwise upper bounds;
* :mod:`.certified`: the certified path (no dense tensor);
* :mod:`.dense`: the dense fallbacks and the dense reference;
* :mod:`.rank1`: the rank-1 dominance path.
"""

from .api import DecodeStats, topk_per_image, topk_predicates_given_labels, topk_triplets_per_pair
from .dense import dense_topk_triplets

__all__ = [
    "DecodeStats",
    "topk_triplets_per_pair",
    "topk_per_image",
    "topk_predicates_given_labels",
    "dense_topk_triplets",
]
