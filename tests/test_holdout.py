"""The validation split held out of a training split (vrd_d2/data/datasets/holdout.py)."""

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vrd_d2.data import get_triplet_counts
from vrd_d2.data.datasets import register_holdout_split, split_holdout
from vrd_d2.data.datasets.vrd import register_all_vrd


def _records(ids):
    return [{"image_id": i, "annotations": [], "relations": np.zeros((0, 3), np.int64)} for i in ids]


def test_partition_by_seeded_permutation_of_sorted_ids():
    ids = [7, 3, 11, 0, 5, 9, 2, 8, 4, 10]
    fit, held = split_holdout(_records(ids), fraction=0.3, seed=4)
    # by hand: the ids in increasing order, permuted by RandomState(4), the first round(0.3 * 10)
    order = sorted(ids)
    expected = {order[i] for i in np.random.RandomState(4).permutation(10)[:3]}
    assert {r["image_id"] for r in held} == expected
    assert {r["image_id"] for r in fit} == set(ids) - expected
    # each part keeps the input order
    assert [r["image_id"] for r in held] == [i for i in ids if i in expected]
    # the split depends on the ids, not on the file's order
    fit2, held2 = split_holdout(_records(ids[::-1]), fraction=0.3, seed=4)
    assert {r["image_id"] for r in held2} == expected
    # another seed gives another split (for these ids and seeds)
    assert {r["image_id"] for r in split_holdout(_records(ids), 0.3, seed=5)[1]} != expected


@pytest.mark.parametrize("fraction, n_held", [(0.01, 1), (0.5, 5), (0.99, 9)])
def test_at_least_one_image_on_each_side(fraction, n_held):
    fit, held = split_holdout(_records(range(10)), fraction=fraction, seed=0)
    assert (len(fit), len(held)) == (10 - n_held, n_held)


@pytest.mark.parametrize(
    "records, kwargs, message",
    [
        (_records(range(5)), {"fraction": 0.0}, "fraction must be a number in \\(0, 1\\)"),
        (_records(range(5)), {"fraction": 1.0}, "fraction"),
        (_records(range(5)), {"fraction": float("nan")}, "fraction"),
        (_records(range(5)), {"fraction": "0.1"}, "fraction"),
        (_records(range(5)), {"seed": -1}, "seed must be a non-negative integer"),
        (_records(range(5)), {"seed": 1.5}, "seed"),
        (_records([1]), {}, "1 image\\(s\\)"),
        (_records([1, 2, 1]), {}, "records 0 and 2 share image_id 1"),
        ([{"image_id": 1}, {"file_name": "x.jpg"}], {}, "record 1 has no 'image_id'"),
    ],
)
def test_bad_arguments_name_the_split(records, kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        split_holdout(records, where="my_train", **kwargs)
    assert "my_train" in str(e.value)


def test_registered_split_takes_prior_and_zero_shot_from_fit_images_only():
    recs = []
    for i in range(20):  # image i holds the triplet (i % 2, i % 3, 1)
        recs.append(
            {
                "image_id": i,
                "annotations": [{"category_id": i % 2}, {"category_id": 1}],
                "relations": np.array([[0, 1, i % 3]], np.int64),
            }
        )
    DatasetCatalog.register("holdout_base_t", lambda: recs)
    MetadataCatalog.get("holdout_base_t").set(
        thing_classes=["a", "b"], predicate_classes=["p", "q", "r"], evaluator_type="vrd"
    )
    register_holdout_split("holdout_base_t", "holdout_fit_t", "holdout_val_t", fraction=0.25, seed=1)
    fit, val = DatasetCatalog.get("holdout_fit_t"), DatasetCatalog.get("holdout_val_t")
    assert len(val) == 5 and len(fit) == 15
    assert {r["image_id"] for r in fit} | {r["image_id"] for r in val} == set(range(20))
    for name in ("holdout_fit_t", "holdout_val_t"):
        md = MetadataCatalog.get(name)
        assert md.thing_classes == ["a", "b"] and md.predicate_classes == ["p", "q", "r"]
        assert md.train_split == "holdout_fit_t" and md.holdout_of == "holdout_base_t"
        assert (md.holdout_fraction, md.holdout_seed) == (0.25, 1)
    # the prior behind the held-out split counts the fit images, by hand
    expected = np.zeros((2, 3, 2), np.int64)
    for r in fit:
        expected[r["image_id"] % 2, r["image_id"] % 3, 1] += 1
    assert np.array_equal(get_triplet_counts("holdout_val_t"), expected)


def test_bad_registration_arguments_fail_at_registration():
    with pytest.raises(ValueError, match="holdout_base_bad: held-out fraction"):
        register_holdout_split("holdout_base_bad", "a_fit", "a_val", fraction=2)
    assert "a_fit" not in DatasetCatalog.list()


def test_builtin_vrd_val_is_registered_lazily():
    # registered at import, whether or not the data are installed
    assert {"vrd_train_fit", "vrd_val", "vg200_train_fit", "vg200_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("vrd_val").train_split == "vrd_train_fit"


def test_real_vrd_heldout_split(shared_vrd):
    register_all_vrd(str(shared_vrd), prefix="holdout_real")
    register_holdout_split("holdout_real_train", "holdout_real_fit", "holdout_real_val")
    train = DatasetCatalog.get("holdout_real_train")
    fit, val = DatasetCatalog.get("holdout_real_fit"), DatasetCatalog.get("holdout_real_val")
    assert len(val) == round(0.1 * len(train)) and len(fit) + len(val) == len(train)
    assert not {r["image_id"] for r in fit} & {r["image_id"] for r in val}
    # every relation of the training split is on exactly one side
    n_rel = sum(len(r["relations"]) for r in train)
    assert sum(len(r["relations"]) for r in fit) + sum(len(r["relations"]) for r in val) == n_rel
    assert (
        MetadataCatalog.get("holdout_real_val").predicate_classes
        == MetadataCatalog.get("holdout_real_train").predicate_classes
    )
