"""The test-time score of every triplet of every pair against a dense brute force computed here
from the predictor's logits (s_s, s_p, s_o, sel), the counts, the box scores and the paper's
formulas, with MODEL.VRD.CRF_NORMALIZE off (eq. 7: psi_c psi_u) and on (divided by its per-pair
sum)."""

import numpy as np
import pytest
import torch
from test_roi_heads import P, S, build, make_inputs, tiny_cfg  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2.modeling.pairs import all_ordered_pairs

BOX_SCORES = (0.9, 0.6, 0.3)


def _dense_crf_and_weight(logits, counts, box_scores, pairs):
    """(psi_c psi_u Tensor[N, S, P, S], P(b_s) P(b_o) sigmoid(sel) Tensor[N]), float64, by hand."""
    phi_s, phi_p, phi_o = (logits[k].double().exp() for k in ("s_s", "s_p", "s_o"))
    numerator = torch.einsum("nri,nrj,nrk->nijk", phi_s, phi_p, phi_o)
    z = (phi_s.sum(-1) * phi_p.sum(-1) * phi_o.sum(-1)).sum(-1)  # eq. 6
    psi_c = numerator / z[:, None, None, None]  # eq. 5
    c = torch.as_tensor(counts, dtype=torch.float64)
    psi_u = (c + 1) / (c.sum() + c.numel())  # add-1 smoothed frequencies
    b = torch.tensor(box_scores, dtype=torch.float64)
    weight = b[pairs[:, 0]] * b[pairs[:, 1]] * torch.sigmoid(logits["sel"].double())
    return psi_c * psi_u, weight


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["phrase_cls", "predcls"])
def test_every_triplet_score_matches_the_dense_brute_force(mode, normalize):
    n_pairs = 3 * 2
    cfg = tiny_cfg(MODE=mode, FEATURES="geometry", CRF_NORMALIZE=normalize)
    cfg.MODEL.VRD.TEST.K_PER_PAIR = [0]
    cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE = n_pairs * S * P * S  # every triplet of every pair
    model = build(cfg)
    counts = np.random.RandomState(4).randint(0, 3, (S, P, S)) * (np.random.RandomState(5).rand(S, P, S) < 0.3)
    model.roi_heads.set_triplet_counts(counts)
    inputs = make_inputs((3,))
    inputs[0]["instances"].gt_scores = torch.tensor(BOX_SCORES)
    del inputs[0]["image"]  # geometry: the pair logits below need no features either
    with torch.no_grad():
        rel = model(inputs)[0]["relations"]
        gt = inputs[0]["instances"]
        pairs = all_ordered_pairs(3)
        logits = model.roi_heads.pair_logits({}, [gt.gt_boxes.tensor], [pairs], [gt.image_size])
    crf, weight = _dense_crf_and_weight(logits, counts, BOX_SCORES, pairs)
    if mode == "predcls":  # the predicates of the given labels (normalized over them)
        cls = gt.gt_classes
        sub, obj = cls[pairs[:, 0]], cls[pairs[:, 1]]
        at_labels = crf[torch.arange(n_pairs), sub, :, obj]  # [N, P]
        if normalize:
            at_labels = at_labels / at_labels.sum(1, keepdim=True)
        scores = at_labels * weight[:, None]
        expected = {(n, int(sub[n]), p, int(obj[n])): float(scores[n, p]) for n in range(n_pairs) for p in range(P)}
    else:
        if normalize:
            crf = crf / crf.sum((1, 2, 3), keepdim=True)
        scores = crf * weight[:, None, None, None]
        expected = {
            (n, s, p, o): float(scores[n, s, p, o])
            for n in range(n_pairs)
            for s in range(S)
            for p in range(P)
            for o in range(S)
        }
    row_of_pair = {tuple(p): i for i, p in enumerate(pairs.tolist())}
    got = {}
    for (i, j), s, p, o, score in zip(
        rel.pair_indices.tolist(),
        rel.subject_classes.tolist(),
        rel.predicate_classes.tolist(),
        rel.object_classes.tolist(),
        rel.scores.tolist(),
    ):
        got[row_of_pair[i, j], s, p, o] = score
    assert len(got) == len(rel) == len(expected) and set(got) == set(expected)
    keys = sorted(expected)
    torch.testing.assert_close(
        torch.tensor([got[k] for k in keys], dtype=torch.float64),
        torch.tensor([expected[k] for k in keys], dtype=torch.float64),
        rtol=2e-4,
        atol=1e-12,
    )
    assert (rel.scores[:-1] >= rel.scores[1:]).all()


def test_the_normaliser_changes_the_ranking_across_pairs():
    """Same model, same counts: the per-pair normaliser reorders triplets of different pairs (the
    reason for the switch); within a pair it is a constant factor and keeps the order."""
    out = {}
    for normalize in (False, True):
        cfg = tiny_cfg(MODE="phrase_cls", FEATURES="geometry", CRF_NORMALIZE=normalize, USE_SELECTION=False)
        cfg.MODEL.VRD.TEST.K_PER_PAIR = [0]
        cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE = 6 * S * P * S
        model = build(cfg)
        model.roi_heads.set_triplet_counts(np.random.RandomState(6).randint(0, 20, (S, P, S)))
        with torch.no_grad():
            rel = model(make_inputs((3,)))[0]["relations"]
        out[normalize] = [
            (tuple(pi), s, p, o)
            for pi, s, p, o in zip(
                rel.pair_indices.tolist(),
                rel.subject_classes.tolist(),
                rel.predicate_classes.tolist(),
                rel.object_classes.tolist(),
            )
        ]
    assert out[False] != out[True] and set(out[False]) == set(out[True])
    for pair in {r[0] for r in out[True]}:
        assert [r for r in out[False] if r[0] == pair] == [r for r in out[True] if r[0] == pair]
