"""engine/rank_usage: the annotated triplets of a batch and the rows of their gold pairs, against a
brute-force search of all_ordered_pairs."""

import torch
from detectron2.structures import Instances

from vrd_d2.engine.rank_usage import _annotated_triplets
from vrd_d2.modeling.pairs import all_ordered_pairs


def _image(classes, relations):
    inst = Instances((10, 10))
    inst.gt_classes = torch.tensor(classes)
    return {"instances": inst, "relations": torch.tensor(relations, dtype=torch.long).reshape(-1, 3)}


def test_annotated_triplets_and_pair_rows_by_brute_force():
    batch = [
        _image([4, 0, 2], [[0, 2, 7], [2, 0, 1], [1, 0, 3], [2, 1, 9]]),
        _image([5, 5], []),  # no relation: its pairs still take rows
        _image([1, 3, 0, 2], [[3, 0, 6], [0, 3, 6], [2, 1, 0]]),
    ]
    sizes = [3, 2, 4]
    pairs = [all_ordered_pairs(n) for n in sizes]
    triplets, rows = _annotated_triplets(batch, pairs)
    offsets = [0, 6, 8]
    expected_t, expected_r = [], []
    for x, p, off in zip(batch, pairs, offsets):
        cls = x["instances"].gt_classes.tolist()
        for i, j, pred in x["relations"].tolist():
            expected_t.append([cls[i], pred, cls[j]])
            expected_r.append(off + [tuple(r) for r in p.tolist()].index((i, j)))
    assert triplets.tolist() == expected_t
    assert rows.tolist() == expected_r
    assert sum(len(p) for p in pairs) == 20


def test_no_relations_gives_empty_tensors():
    triplets, rows = _annotated_triplets([_image([0, 1], [])], [all_ordered_pairs(2)])
    assert triplets.shape == (0, 3) and rows.shape == (0,)
