"""vrd_d2.modeling.pairs: all ordered pairs, the pair cap, proposal matching, the annotated
triplets of each pair; against brute force and hand counts."""

import logging

import torch
from detectron2.structures import Boxes, pairwise_iou

from vrd_d2.modeling.pairs import all_ordered_pairs, cap_pairs, match_proposals_to_gt, pair_triplets


def test_all_ordered_pairs_brute_force():
    for n in range(5):
        got = [tuple(r) for r in all_ordered_pairs(n).tolist()]
        assert got == [(i, j) for i in range(n) for j in range(n) if i != j]


def test_pair_triplets_hand_count():
    pairs = all_ordered_pairs(3)  # (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    gt_index = torch.tensor([0, 1, 2])
    classes = torch.tensor([5, 6, 7])
    relations = torch.tensor([[0, 1, 0], [0, 1, 2], [2, 0, 1]])
    trip, pidx = pair_triplets(pairs, gt_index, classes, relations)
    got = sorted(zip(pidx.tolist(), map(tuple, trip.tolist())))
    assert got == [(0, (5, 0, 6)), (0, (5, 2, 6)), (4, (7, 1, 5))]


def test_match_proposals_to_gt_brute_force():
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    jitter = torch.rand(12, 4, generator=g) * 6 - 3
    props = torch.cat((gt[0] + jitter[:6], gt[1] + jitter[6:]))
    p_idx, g_idx = match_proposals_to_gt(Boxes(props), Boxes(gt), per_gt=4, iou_thresh=0.5)
    iou = pairwise_iou(Boxes(gt), Boxes(props))
    for gi in range(2):
        ok = [(float(iou[gi, j]), j) for j in range(12) if iou[gi, j] >= 0.5]
        want = sorted([j for _, j in sorted(ok, reverse=True)[:4]])
        assert sorted(p_idx[g_idx == gi].tolist()) == want


def test_cap_pairs_keeps_highest_priority_and_logs(caplog):
    pairs = all_ordered_pairs(4)
    prio = torch.arange(12).float().flip(0)
    with caplog.at_level(logging.WARNING):
        kept = cap_pairs(pairs, 5, prio)
    assert kept.tolist() == pairs[:5].tolist()
    assert "MAX_PAIRS_PER_IMAGE" in caplog.text
    assert cap_pairs(pairs, 100, prio) is pairs
