"""vrd_d2.modeling.spatial: the binary spatial masks of a pair, checked on a hand-drawn example."""

import torch

from vrd_d2.modeling.spatial import spatial_masks


def test_spatial_masks_hand_example():
    sub = torch.tensor([[0.0, 0, 4, 4]])
    obj = torch.tensor([[4.0, 4, 8, 8]])
    m = spatial_masks(sub, obj, 8)
    want = torch.zeros(2, 8, 8)
    want[0, :4, :4] = 1
    want[1, 4:, 4:] = 1
    assert torch.equal(m[0], want)
