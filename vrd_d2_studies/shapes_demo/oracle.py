"""Ceilings of the shapes data, computed from the generator's own probabilities.

Phrase classification with gold boxes, free k, R@K: a model sees every box, the shape of every
object and the colour of every object not in shadow. For a pair (i, j) and a triplet (s, p, o)
the generator gives

    T_ij(s, p, o) = P(looked_ij) * sum_a w(a) [cls_i(a) = s] [cls_j(a) = o] E[#p labelled | looked, a]

where ``a`` runs over the hidden colours of the shadowed objects of the image, w(a) is their
posterior (the class probabilities, and a nested object never has its host's colour) and the
expectation follows the annotator (each valid predicate with LABEL_PROBS, the obvious one when
none was drawn). Ranking all triplets of an image by T is Bayes-optimal for recall. The scorers:

- ``optimal``: T itself;
- ``rankR``: what the paper's model can represent at rank R >= 4 with the selection head:
  P(looked) x psi_c with psi_c = T / sum T per pair; a pair has at most two hidden colours, so at
  most 4 (subject colour, object colour) components, each one class x predicates x one class;
- ``rank1``: P(looked) x the product of psi_c's marginals (the maximum-likelihood rank-1 fit);
- ``*_no_sel``: the same without P(looked);
- ``rank5_prior`` / ``rank1_prior``: the full model of the paper with psi_c at that ceiling, eq. 7:
  P(looked) x (psi_c psi_u / sum psi_c psi_u), psi_u the add-1 smoothed training counts (only when
  a ``prior`` is given). Since ``rank5`` is Bayes-optimal up to each pair's expected number of
  labels, psi_u can only lower it (it counts the class-predicate statistics psi_c already holds a
  second time), while it restores part of what rank 1 cannot represent.

Recall counts hits against an image's annotated relations (``relations`` of the json), as the
evaluator does with gold boxes. The generator's last-resort label (an image with no label gets
its nearest pair's obvious predicate) is not modelled (a handful of images).
"""

import itertools
import json
import os
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from . import data as shapes

__all__ = [
    "SCORERS",
    "PRIOR_SCORERS",
    "pair_tensors",
    "training_counts",
    "prior_from_counts",
    "prior_of_root",
    "image_scores",
    "oracle_recall",
    "oracle_recall_of_split",
    "oracle_recall_of_fresh_images",
    "oracle_of_dataset",
    "format_oracle_line",
    "oracle_json",
]

SCORERS = ("optimal", "rank5", "rank1", "rank5_no_sel", "rank1_no_sel")
PRIOR_SCORERS = ("rank5_prior", "rank1_prior")


def _hidden_colour_posterior(objects: Sequence[dict]):
    """[(weight, colour index per object)] over the assignments of the shadowed objects' colours."""
    n_shapes = len(shapes.SHAPES)
    shape = [o["category_id"] % n_shapes for o in objects]
    colour = [o["category_id"] // n_shapes for o in objects]
    hidden = [k for k, o in enumerate(objects) if o["shadowed"]]
    boxes = [o["bbox"] for o in objects]
    nested = [
        (k, m)
        for k in range(len(objects))
        for m in range(len(objects))
        if k != m and shapes._inside(boxes[k], boxes[m])
    ]
    out = []
    for assign in itertools.product(range(len(shapes.COLOURS)), repeat=len(hidden)):
        col = list(colour)
        w = 1.0
        for k, c in zip(hidden, assign):
            col[k] = c
            w *= shapes.CLASS_PROBS[c * n_shapes + shape[k]]
        if any(col[k] == col[m] for k, m in nested):  # a host square has the other colour
            w = 0.0
        if w > 0:
            out.append((w, col))
    total = sum(w for w, _ in out)
    return [(w / total, [c * n_shapes + s for c, s in zip(col, shape)]) for w, col in out]


def pair_tensors(objects: Sequence[dict]) -> Dict[tuple, tuple]:
    """{(i, j): (P(looked), U float [S, P, O])}: U = E[#(s, p, o) labelled | looked, visible]."""
    posterior = _hidden_colour_posterior(objects)
    n_cls, n_pred = len(shapes.SHAPE_CLASSES), len(shapes.SHAPE_PREDICATES)
    boxes = [o["bbox"] for o in objects]
    out = {}
    for i, j in itertools.permutations(range(len(objects)), 2):
        u = np.zeros((n_cls, n_pred, n_cls))
        for w, cats in posterior:
            valid = shapes.valid_predicates(boxes[i], cats[i], boxes[j], cats[j])
            u[cats[i], :, cats[j]] += w * shapes.expected_labels(valid)
        out[(i, j)] = (shapes.look_probability(boxes[i], boxes[j]), u)
    return out


def _rank1(q: np.ndarray) -> np.ndarray:
    return np.einsum("s,p,o->spo", q.sum((1, 2)), q.sum((0, 2)), q.sum((0, 1)))


def training_counts(images: Iterable[dict]) -> np.ndarray:
    """int64 [S, P, O]: the annotated (subject class, predicate, object class) triplets of
    ``images`` (entries of the shapes json), as the model's prior counts them."""
    n_cls, n_pred = len(shapes.SHAPE_CLASSES), len(shapes.SHAPE_PREDICATES)
    counts = np.zeros((n_cls, n_pred, n_cls), dtype=np.int64)
    for d in images:
        cats = [o["category_id"] for o in d["objects"]]
        for s, o, p in {tuple(r) for r in d["relations"]}:
            counts[cats[s], p, cats[o]] += 1
    return counts


def prior_from_counts(counts: np.ndarray) -> np.ndarray:
    """psi_u float [S, P, O] = (count + 1) / (total + S P O), the paper's prior (as
    :class:`vrd_d2.modeling.triplet_prior.TripletPrior`)."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + 1.0) / (counts.sum() + counts.size)


def _check_scorers(scorers: Sequence[str], prior) -> None:
    for name in scorers:
        if name not in SCORERS + PRIOR_SCORERS:
            raise ValueError(f"shapes_oracle: scorer must be one of {SCORERS + PRIOR_SCORERS}, found {name!r}")
        if name in PRIOR_SCORERS and prior is None:
            raise ValueError(f"shapes_oracle: scorer {name!r} needs the prior psi_u (prior=None)")


def _pair_scores(look: float, u: np.ndarray, scorers: Sequence[str], prior) -> Dict[str, np.ndarray]:
    q = u / u.sum()
    r1 = _rank1(q)
    out = {}
    for name in scorers:
        if name == "optimal":
            out[name] = look * u
        elif name.startswith("rank"):
            t = q if name.startswith("rank5") else r1
            if name.endswith("_prior"):
                t = t * prior
                t = t / t.sum()
            out[name] = t if name.endswith("_no_sel") else look * t
    return out


def image_scores(objects: Sequence[dict], scorer: str, prior: Optional[np.ndarray] = None):
    """(pairs int [N, 2], triplets int [N, 3], scores float [N]) of every triplet of every pair
    (``prior``: psi_u [S, P, O], needed by the PRIOR_SCORERS)."""
    _check_scorers((scorer,), prior)
    return _image_scores(pair_tensors(objects), (scorer,), prior)[scorer]


def _image_scores(tensors: Dict[tuple, tuple], scorers: Sequence[str], prior) -> Dict[str, tuple]:
    parts = {name: ([], [], []) for name in scorers}
    for (i, j), (look, u) in tensors.items():
        for name, t in _pair_scores(look, u, scorers, prior).items():
            idx = np.argwhere(t > 0)
            pairs, trips, scores = parts[name]
            pairs.append(np.tile([i, j], (len(idx), 1)))
            trips.append(idx)
            scores.append(t[tuple(idx.T)])
    out = {}
    for name, (pairs, trips, scores) in parts.items():
        if not pairs:
            out[name] = np.zeros((0, 2), int), np.zeros((0, 3), int), np.zeros(0)
        else:
            out[name] = np.concatenate(pairs), np.concatenate(trips), np.concatenate(scores)
    return out


def _hits(objects, relations, scorers: Sequence[str], k: int, prior) -> Dict[str, int]:
    cats = [o["category_id"] for o in objects]
    gt = {(s, o, p) for s, o, p in relations}
    out = {}
    for name, (pairs, trips, scores) in _image_scores(pair_tensors(objects), scorers, prior).items():
        top = np.argsort(-scores, kind="stable")[:k]
        out[name] = sum(
            (int(pairs[t, 0]), int(pairs[t, 1]), int(trips[t, 1])) in gt
            and trips[t, 0] == cats[pairs[t, 0]]
            and trips[t, 2] == cats[pairs[t, 1]]
            for t in top
        )
    return out


def oracle_recall(
    images: Iterable[dict], k: int = 50, scorers: Optional[Sequence[str]] = None, prior: Optional[np.ndarray] = None
) -> Dict[str, float]:
    """{scorer: recall@k in percent} over ``images`` (entries of the shapes json: ``objects``
    with bbox, category_id, shadowed; ``relations`` [subject, object, predicate] rows).
    ``scorers`` default: SCORERS, and PRIOR_SCORERS when ``prior`` (psi_u [S, P, O]) is given."""
    if scorers is None:
        scorers = SCORERS + (PRIOR_SCORERS if prior is not None else ())
    _check_scorers(scorers, prior)
    hits = dict.fromkeys(scorers, 0)
    total = 0
    for d in images:
        rel = {tuple(r) for r in d["relations"]}
        total += len(rel)
        for name, h in _hits(d["objects"], rel, scorers, k, prior).items():
            hits[name] += h
    return {name: 100.0 * h / max(1, total) for name, h in hits.items()}


def _json_images(root: str, split: str):
    with open(os.path.join(root, f"shapes_{split}.json")) as f:
        return json.load(f)["images"]


def prior_of_root(root: str) -> np.ndarray:
    """psi_u from ``shapes_train.json`` in the dataset folder ``root``."""
    return prior_from_counts(training_counts(_json_images(root, "train")))


def oracle_recall_of_split(root: str, split: str, k: int = 50, prior: Optional[np.ndarray] = None) -> Dict[str, float]:
    """:func:`oracle_recall` of ``shapes_<split>.json`` in the dataset folder ``root``."""
    return oracle_recall(_json_images(root, split), k, prior=prior)


def oracle_of_dataset(name: str, k: int = 50, train: Optional[str] = None) -> Dict[str, float]:
    """:func:`oracle_recall` of the registered shapes dataset ``name`` (its images, read from
    the json of its metadata: ``json_file``), with psi_u from the counts the model's prior uses
    (``get_triplet_counts(train)``; default: ``name``'s training split)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vrd_d2.data import get_triplet_counts

    ids = {d["image_id"] for d in DatasetCatalog.get(name)}
    with open(MetadataCatalog.get(name).json_file) as f:
        images = [d for d in json.load(f)["images"] if d["image_id"] in ids]
    return oracle_recall(images, k, prior=prior_from_counts(get_triplet_counts(train or name)))


def oracle_recall_of_fresh_images(
    n: int, seed: int = 1000, k: int = 50, prior: Optional[np.ndarray] = None
) -> Dict[str, float]:
    """:func:`oracle_recall` of ``n`` images drawn by the generator (no files written)."""
    rng = np.random.default_rng([seed, 99])
    return oracle_recall((shapes._make_image(rng, i, "oracle")[1] for i in range(n)), k, prior=prior)


def format_oracle_line(recall: Dict[str, float], where: str, k: int = 50) -> str:
    """One line of ceilings for the demo's table (phrase_cls free-k R@k)."""
    line = (
        f"Ceilings from the generator's probabilities (tools/shapes_oracle.py), phrase_cls R@{k} free k "
        f"on {where}: Bayes-optimal {recall['optimal']:.2f}; rank ≥ 4 + X_sel {recall['rank5']:.2f}; "
        f"rank 1 + X_sel {recall['rank1']:.2f} (without X_sel: rank ≥ 4 {recall['rank5_no_sel']:.2f}, "
        f"rank 1 {recall['rank1_no_sel']:.2f})"
    )
    if all(name in recall for name in PRIOR_SCORERS):
        line += (
            f"; with the prior ψ_u (training counts): rank ≥ 4 + X_sel + prior {recall['rank5_prior']:.2f}, "
            f"rank 1 + X_sel + prior {recall['rank1_prior']:.2f}"
        )
    return line + "."


def oracle_json(recall: Dict[str, float], k: int = 50) -> Dict[str, Optional[float]]:
    """The keys of ``tools/shapes_oracle.py --json``."""
    return {
        **{f"{name}_R{k}_free_k": recall[name] for name in ("optimal", "rank1", "rank5")},
        **{f"{name}_R{k}_free_k": recall[name] for name in SCORERS + PRIOR_SCORERS if name in recall},
    }
