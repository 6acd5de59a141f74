"""tools/benchmark_cp.py is thin: its settings, the dense-agreement check and one decode row are in
vrd_d2_studies.benchmarks.cp_benchmark, checked here on tiny inputs; the library never imports it."""

import pathlib

import torch
from conftest import REPO
from tools_loader import load_tool

from vrd_d2_studies.benchmarks.cp_benchmark import decode_row, resolve_settings, same_as_dense


def settings(*argv):
    return resolve_settings(load_tool("benchmark_cp").get_parser().parse_args(list(argv)))


def test_quick_full_and_overrides_set_the_sizes_of_each_part():
    quick = settings("--quick")
    assert (quick.loss_pairs, quick.dense_pairs, quick.chunk) == ([256], 4, 2)
    assert (quick.decode_pairs, quick.dense_pairs_decode, quick.decode_ranks, quick.vg200_pairs) == (32, 8, [5], 16)
    default = settings()
    assert (default.loss_pairs, default.decode_ranks, default.vg200_pairs) == ([256, 1024, 4096], [1, 5, 10], 1000)
    full = settings("--full", "--dense-pairs", "7", "--decode-ranks", "2", "3", "--vg200-pairs", "5")
    assert (full.dense_pairs, full.dense_pairs_decode, full.decode_ranks, full.vg200_pairs) == (7, 1 << 30, [2, 3], 5)


def test_same_as_dense_allows_ties_to_swap_but_not_distinct_scores():
    v = torch.tensor([[3.0, 2.0, 2.0, 1.0]])
    t = torch.tensor([[[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]]])
    swapped_tie = t[:, [0, 2, 1, 3]]
    assert same_as_dense(v, t, v.clone(), swapped_tie, 1e-4)
    swapped_distinct = t[:, [1, 0, 2, 3]]
    assert not same_as_dense(v, t, v.clone(), swapped_distinct, 1e-4)
    assert not same_as_dense(v, t, v + 0.01, t, 1e-4)


def test_a_decode_row_on_tiny_sizes_is_exact_and_recorded():
    rows = []
    _, record = decode_row("tiny", (5, 4, 5), "peaked", None, 2, 3, 3, torch.device("cpu"), torch.Generator(), rows)
    assert record["exact"] and record["pairs"] == 3 and record["dense_pairs_measured"] == 3
    assert len(rows) == 1 and rows[0][:4] == ("top100", "tiny", 2, 3) and rows[0][-1] == "exact"
