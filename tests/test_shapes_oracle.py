"""The shapes oracle: expected labels against a simulation of the annotator, the hidden-colour
posterior on hand-built scenes, rank 1 exact when every colour is visible, the rank gap the
generator is built for (issue #13: >= 3 points at free-k R@50), and the full model's ceilings with
the prior psi_u (the model's own prior, rebuilt independently)."""

import json

import numpy as np
import pytest
from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2_studies.shapes_demo import data as shapes
from vrd_d2_studies.shapes_demo import oracle

RED_SQUARE, RED_CIRCLE, BLUE_CIRCLE, BLUE_TRIANGLE = 1, 0, 3, 5


def _obj(box, cat, shadowed=False):
    return {"bbox": list(box), "category_id": cat, "shadowed": shadowed}


@pytest.mark.parametrize("valid", [[0, 4, 7], [6], [1, 3, 8, 9], [2, 5, 8]])
def test_expected_labels_match_a_simulated_annotator(valid):
    """The annotator's rule written out again (draw each valid predicate, else the most likely
    one), simulated 40000 times."""
    rng = np.random.default_rng(0)
    probs = shapes.LABEL_PROBS
    counts = np.zeros(len(shapes.SHAPE_PREDICATES))
    n = 40000
    for _ in range(n):
        drawn = [p for p in valid if rng.random() < probs[p]]
        if not drawn:
            drawn = [sorted(valid, key=lambda p: (-probs[p], p))[0]]
        counts[drawn] += 1
    np.testing.assert_allclose(shapes.expected_labels(valid), counts / n, atol=0.01)


def test_shadowed_object_inside_a_visible_square_has_the_other_colour():
    """A nested object never has its host's colour: a shadowed circle inside a red square is blue."""
    objs = [
        _obj((10, 10, 60, 60), RED_SQUARE),
        _obj((20, 20, 30, 30), BLUE_CIRCLE, shadowed=True),
        _obj((80, 80, 90, 90), RED_CIRCLE),
    ]
    look, u = oracle.pair_tensors(objs)[(1, 0)]
    assert look == pytest.approx(1.0)  # touching boxes: gap 0
    assert u[RED_CIRCLE].sum() == 0 and u[BLUE_CIRCLE, :, RED_SQUARE].sum() > 0
    inside = shapes.SHAPE_PREDICATES.index("inside")
    different = shapes.SHAPE_PREDICATES.index("different colour from")
    smaller = shapes.SHAPE_PREDICATES.index("smaller than")
    # valid: smaller than, different colour from, inside (nested: not near); "inside" is also the
    # annotator's fallback when nothing was drawn
    none_drawn = np.prod([1 - shapes.LABEL_PROBS[p] for p in (smaller, different, inside)])
    assert u[BLUE_CIRCLE, inside, RED_SQUARE] == pytest.approx(shapes.LABEL_PROBS[inside] + none_drawn)
    assert u[BLUE_CIRCLE, different, RED_SQUARE] == pytest.approx(shapes.LABEL_PROBS[different])


def test_free_shadowed_object_is_a_mixture_weighted_by_the_class_probabilities():
    objs = [_obj((10, 10, 20, 20), RED_CIRCLE, shadowed=True), _obj((24, 10, 34, 20), BLUE_TRIANGLE)]
    look, u = oracle.pair_tensors(objs)[(0, 1)]
    assert look == pytest.approx(np.exp(-4 / shapes.LOOK_SCALE_PX))
    p_red, p_blue = shapes.CLASS_PROBS[RED_CIRCLE], shapes.CLASS_PROBS[BLUE_CIRCLE]
    same = shapes.SHAPE_PREDICATES.index("same colour as")
    different = shapes.SHAPE_PREDICATES.index("different colour from")
    # the blue circle goes with "same colour as", the red one with "different colour from"
    assert u[BLUE_CIRCLE, same, BLUE_TRIANGLE] == pytest.approx(p_blue / (p_red + p_blue) * shapes.LABEL_PROBS[same])
    assert u[RED_CIRCLE, different, BLUE_TRIANGLE] == pytest.approx(
        p_red / (p_red + p_blue) * shapes.LABEL_PROBS[different]
    )
    assert u[BLUE_CIRCLE, different].sum() == 0 and u[RED_CIRCLE, same].sum() == 0
    # rank 1 (product of marginals) puts mass on the impossible (red circle, same colour as) triplet
    q = u / u.sum()
    assert oracle._rank1(q)[RED_CIRCLE, same, BLUE_TRIANGLE] > 0.01


def test_rank1_is_exact_when_every_colour_is_visible():
    rng = np.random.default_rng([3, 99])
    images = [shapes._make_image(rng, i, "t")[1] for i in range(30)]
    for d in images:
        for o in d["objects"]:
            o["shadowed"] = False
    r = oracle.oracle_recall(images, k=50, scorers=("rank5", "rank1"))
    assert r["rank5"] == pytest.approx(r["rank1"])
    for d in images[:5]:  # and each pair's tensor is a product of its marginals
        for _, u in oracle.pair_tensors(d["objects"]).values():
            q = u / u.sum()
            np.testing.assert_allclose(oracle._rank1(q), q, atol=1e-12)


def test_recall_counts_hits_against_the_annotated_relations():
    """Two visible objects side by side, one annotated relation: every scorer ranks it first."""
    objs = [_obj((10, 10, 20, 20), RED_CIRCLE), _obj((24, 10, 34, 20), BLUE_TRIANGLE)]
    left = shapes.SHAPE_PREDICATES.index("left of")
    images = [{"objects": objs, "relations": [[0, 1, left]]}]
    assert oracle.oracle_recall(images, k=50) == {name: 100.0 for name in oracle.SCORERS}
    images = [{"objects": objs, "relations": [[1, 0, left]]}]  # not valid: never predicted
    assert oracle.oracle_recall(images, k=50)["optimal"] == 0.0


def test_oracle_rank_gap_is_at_least_three_points(tmp_path):
    """Issue #13: rank 1 cannot represent the hidden-colour mixtures; on 300 generated images the
    best rank-1 ranking loses >= 3 points of free-k R@50 against rank >= 4 (both with X_sel)."""
    tool = load_tool("shapes_oracle")
    out = tmp_path / "oracle.json"
    assert tool.main(["--images", "300", "--seed", "7", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"optimal_R50_free_k", "rank1_R50_free_k", "rank5_R50_free_k"}
    assert r["optimal_R50_free_k"] >= r["rank5_R50_free_k"] - 0.5  # optimal up to sampling ties
    assert r["rank5_R50_free_k"] - r["rank1_R50_free_k"] >= 3.0, r
    # the prior restores part of what rank 1 loses; at rank >= 4 it counts the class-predicate
    # statistics psi_c already holds a second time (the trained rank-5 nets of the demo lose too)
    assert r["rank1_prior_R50_free_k"] - r["rank1_R50_free_k"] >= 1.0, r
    assert r["rank5_prior_R50_free_k"] < r["rank5_R50_free_k"] - 1.0, r


def test_oracle_prior_is_the_models_prior():
    """psi_u of the oracle (counted from the training json) equals the model's: the counts of the
    registered loader and TripletPrior's add-1 smoothing."""
    import torch

    from vrd_d2.data import get_triplet_counts
    from vrd_d2.modeling.triplet_prior import TripletPrior

    root = shapes.ensure_shapes(seed=0)
    with open(root + "/shapes_train.json") as f:
        counts = oracle.training_counts(json.load(f)["images"])
    np.testing.assert_array_equal(counts, get_triplet_counts("shapes_train"))
    assert counts.sum() > 10000  # the real training split, not an empty one
    model = TripletPrior.from_counts(torch.as_tensor(counts)).to_dense().double().numpy()
    np.testing.assert_allclose(oracle.prior_from_counts(counts), model, rtol=1e-12)
    np.testing.assert_allclose(oracle.prior_of_root(root), model, rtol=1e-12)


def test_uniform_prior_changes_no_ranking():
    """psi_u of no counts is uniform: the full model's ceilings equal the ones without the prior."""
    rng = np.random.default_rng([5, 99])
    images = [shapes._make_image(rng, i, "t")[1] for i in range(30)]
    uniform = oracle.prior_from_counts(np.zeros((6, 10, 6)))
    r = oracle.oracle_recall(images, k=20, prior=uniform)
    assert r["rank5_prior"] == pytest.approx(r["rank5"]) and r["rank1_prior"] == pytest.approx(r["rank1"])
    assert r["rank1"] < r["rank5"]  # a sample where the two differ


def test_prior_sends_the_triplet_rank1_invents_below_the_valid_ones():
    """A shadowed circle beside a blue triangle: rank 1 gives the impossible (red circle, same
    colour as, blue triangle) mass; a prior that never saw it ranks it below every valid triplet."""
    objs = [_obj((10, 10, 20, 20), RED_CIRCLE, shadowed=True), _obj((24, 10, 34, 20), BLUE_TRIANGLE)]
    same = shapes.SHAPE_PREDICATES.index("same colour as")
    different = shapes.SHAPE_PREDICATES.index("different colour from")
    counts = np.zeros((6, 10, 6))
    counts[:, :, BLUE_TRIANGLE] = 50  # every triplet with a blue triangle object was seen ...
    counts[RED_CIRCLE, same, BLUE_TRIANGLE] = counts[BLUE_CIRCLE, different, BLUE_TRIANGLE] = 0  # ... but these
    prior = oracle.prior_from_counts(counts)
    look, u = oracle.pair_tensors(objs)[(0, 1)]
    valid = {tuple(t) for t in np.argwhere(u > 0)}
    impossible = (RED_CIRCLE, same, BLUE_TRIANGLE)
    assert impossible not in valid
    for scorer, below in (("rank1", False), ("rank1_prior", True)):
        pairs, trips, scores = oracle.image_scores(objs, scorer, prior=prior)
        on_pair = (pairs[:, 0] == 0) & (pairs[:, 1] == 1)
        by_triplet = {tuple(t): v for t, v in zip(trips[on_pair], scores[on_pair])}
        lowest_valid = min(by_triplet[t] for t in valid)
        assert (by_triplet[impossible] < lowest_valid) == below, scorer
        assert sum(by_triplet.values()) == pytest.approx(look)  # X_sel x a distribution over triplets


def test_prior_scorers_need_a_prior():
    objs = [_obj((10, 10, 20, 20), RED_CIRCLE), _obj((24, 10, 34, 20), BLUE_TRIANGLE)]
    with pytest.raises(ValueError, match="needs the prior"):
        oracle.image_scores(objs, "rank5_prior")
    with pytest.raises(ValueError, match="scorer must be one of"):
        oracle.oracle_recall([], scorers=("rank3",))
