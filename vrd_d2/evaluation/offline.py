"""Scoring a results file without the model (the library behind tools/eval_results.py).

* :func:`load_predictions`: our JSON or Lu's .mat results -> evaluator entries aligned with the
  ground truth (gt.mat by file name, a registered dataset by image_id);
* :func:`evaluate_results_file`: build the :class:`VRDEvaluator` for gt.mat or a dataset, score;
* :func:`flat_scores`: the flat ``<task>_R@K`` dict written by ``--json`` (each protocol's
  :meth:`~.protocols.RelationProtocol.flat_scores`);
* :func:`lu_class_counts`: class-list sizes beside Lu's gt.mat.
"""

import os
from typing import List, Optional, Sequence, Tuple

from ..data.datasets.lu2016 import load_image_paths
from .results_io import image_key, load_lu_results_mat
from .results_json import load_results_json
from .vrd_evaluation import VRDEvaluator

__all__ = ["lu_class_counts", "load_predictions", "flat_scores", "evaluate_results_file"]


def lu_class_counts(gt_mat: str) -> Tuple[int, int]:
    """Sizes of Lu's objectListN / relationListN in ``<gt.mat>/../../data``, else VRD's 100 / 70."""
    import scipy.io

    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(gt_mat))), "data")
    sizes = []
    for name, key, default in (("objectListN.mat", "objectListN", 100), ("relationListN.mat", "relationListN", 70)):
        path = os.path.join(data, name)
        sizes.append(scipy.io.loadmat(path)[key].size if os.path.isfile(path) else default)
    return tuple(sizes)


def _check_unique(entries: List[dict], key_of, known, unknown_msg: str):
    seen = {}
    for e in entries:
        key = key_of(e)
        if key not in known:
            raise ValueError(f"{e['where']}: {unknown_msg}")
        if key in seen:
            raise ValueError(f"{e['where']}: image repeated (also {seen[key]})")
        seen[key] = e["where"]


def load_predictions(
    results: str,
    gt_names: Optional[List[str]],
    dataset_dicts: Optional[Sequence[dict]] = None,
    dataset_name: Optional[str] = None,
    only_present_images: bool = False,
) -> List[dict]:
    """Results file -> entries ``{"image_id", "file_name", "record", "where"}``.

    Args:
        results: our .json or Lu's .mat results.
        gt_names: gt.mat's image names (imagePath.mat order), or None for a dataset.
        dataset_dicts, dataset_name: the registered dataset when ``gt_names`` is None.
        only_present_images: a JSON file may leave images of the ground truth out (they are
            then not scored); otherwise every image needs an entry.
    Raises ValueError naming the file on a wrong number of images, unknown or repeated images,
    or a JSON file that declares another dataset (its ``dataset`` key) or another format.
    """
    n_gt = len(gt_names) if gt_names is not None else len(dataset_dicts)
    if results.endswith(".mat"):
        if gt_names is None:
            raise ValueError(f"{results}: Lu .mat results need --gt-mat (their cells follow imagePath.mat)")
        mat = load_lu_results_mat(results, num_images=n_gt, names=gt_names)  # raises on a wrong cell count
        return [
            {"image_id": i, "file_name": gt_names[i], "record": r, "where": f"{results}: image {i} ({gt_names[i]})"}
            for i, r in enumerate(mat)
        ]
    entries = load_results_json(results, expected_dataset=dataset_name)
    if len(entries) > n_gt or (len(entries) < n_gt and not only_present_images):
        raise ValueError(
            f"{results}: {len(entries)} images, but the ground truth has {n_gt} "
            f"({'gt.mat' if gt_names is not None else dataset_name}); every image needs an entry "
            f"(an empty 'relations' list for none; --only-present-images scores only the images present)"
        )
    if gt_names is not None:  # match to gt.mat by file name
        index = {image_key(n): i for i, n in enumerate(gt_names)}
        _check_unique(entries, lambda e: image_key(e["file_name"]), index, "file name not among the gt.mat images")
        for e in entries:
            e["image_id"] = index[image_key(e["file_name"])]
        return entries
    ids = {d["image_id"] for d in dataset_dicts}
    _check_unique(entries, lambda e: e["image_id"], ids, f"image_id not in {dataset_name}")
    return entries


def flat_scores(results, protocols, k: int = 0) -> Tuple[dict, dict]:
    """The flat scores of ``--json`` and the settings written beside them.

    ``protocols``: the evaluator's name -> protocol (``VRDEvaluator.protocols``). One protocol:
    its :meth:`~.protocols.RelationProtocol.flat_scores` (Lu: ``<task>_R@K`` and
    ``zeroshot_<task>_R@K`` at ``k`` per pair; SGB: ``<task>_<metric>``, ``relationship_R@20``
    graph-constrained, ``relationship_ngR@20`` not). Several ("both"): the first protocol's
    scores as they are, every other one's prefixed ``<name>_`` (``sgb_relationship_R@20``).
    """
    scores, settings = {}, {}
    for i, (name, protocol) in enumerate(protocols.items()):
        own = results if len(protocols) == 1 else results[name]
        prefix = "" if i == 0 else f"{name}_"
        scores.update((prefix + key, v) for key, v in protocol.flat_scores(own, k).items())
        settings.update(protocol.flat_settings(k))
    return scores, settings


def evaluate_results_file(
    results: str,
    *,
    dataset: Optional[str] = None,
    gt_mat: Optional[str] = None,
    image_path_mat: Optional[str] = None,
    protocol: str = "lu",
    num_objects: Optional[int] = None,
    num_predicates: Optional[int] = None,
    only_present_images: bool = False,
    **evaluator_kwargs,
):
    """Score a results file against gt.mat (Lu's files) or a registered dataset.

    ``evaluator_kwargs`` go to :class:`VRDEvaluator` (mode, k_values, denominator, zeroshot_mat,
    sgb_zeroshot_triplets, ...). Returns (results dict, printable table, the evaluator).
    """
    if (dataset is None) == (gt_mat is None):
        raise ValueError("give exactly one of a dataset name and gt.mat")
    kwargs = dict(
        evaluator_kwargs,
        distributed=False,
        save_predictions=False,
        protocol=protocol,
        only_present_images=only_present_images,
    )
    if gt_mat is not None:
        image_path_mat = image_path_mat or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(gt_mat))), "data", "imagePath.mat"
        )
        gt_names, dataset_dicts = load_image_paths(image_path_mat), None
        n_obj, n_pred = lu_class_counts(gt_mat)
        evaluator = VRDEvaluator(
            "vrd_d2_eval_results_lu_gt",
            gt_mat=gt_mat,
            image_path_mat=image_path_mat,
            num_objects=num_objects or n_obj,
            num_predicates=num_predicates or n_pred,
            **kwargs,
        )
    else:
        from detectron2.data import DatasetCatalog

        import vrd_d2.data  # noqa: F401  (registers the builtin datasets)

        gt_names, dataset_dicts = None, DatasetCatalog.get(dataset)
        evaluator = VRDEvaluator(dataset, num_objects=num_objects, num_predicates=num_predicates, **kwargs)
    predictions = load_predictions(results, gt_names, dataset_dicts, dataset, only_present_images)
    out = evaluator.evaluate_predictions(predictions)
    return out, evaluator.format_results(out), evaluator
