"""The Scene-Graph-Benchmark protocol (vrd_d2.evaluation.sgb): hand-worked cases for each rule, and
every place where SGB and Lu et al. differ shown with both numbers on the same input."""

import copy
import json

import numpy as np
import pytest
import torch

from vrd_d2.evaluation import (
    VRDEvaluator,
    count_recall_hits,
    evaluate_records,
    evaluate_records_sgb,
    load_lu_ground_truth,
    load_sgb_zeroshot_triplets,
    recall_metrics,
    sgb_hit_matrix,
    sgb_recall,
    write_results_json,
    zeroshot_rows,
)

A = [0.0, 0.0, 9.0, 9.0]  # 10 x 10 pixels (inclusive convention)
B = [20.0, 20.0, 29.0, 29.0]
C = [40.0, 40.0, 49.0, 49.0]
FAR = [100.0, 100.0, 109.0, 109.0]


def gt(labels, subs, objs, zeroshot=None):
    r = {
        "labels": np.array(labels, np.int64).reshape(-1, 3),
        "sub_boxes": np.array(subs, np.float64).reshape(-1, 4),
        "obj_boxes": np.array(objs, np.float64).reshape(-1, 4),
    }
    if zeroshot is not None:
        r["zeroshot"] = np.array(zeroshot, bool)
    return r


def pred(labels, subs, objs, scores, pair_rank=None):
    r = gt(labels, subs, objs)
    r["scores"] = np.array(scores, np.float64)
    r["pair_rank"] = np.zeros(len(r["scores"]), np.int64) if pair_rank is None else np.array(pair_rank, np.int64)
    return r


def sgb(preds, gts, gc=True, topk=(20, 50, 100), criterion="relationship", P=5):
    """SGB metrics in percent (graph constraint or not)."""
    return sgb_recall(preds, gts, criterion, gc, topk, num_predicates=P).metrics("" if gc else "ng")


def lu(preds, gts, k=0, topk=(20, 50, 100), criterion="relationship", P=5):
    """Lu's metrics in percent for k per pair."""
    return recall_metrics(count_recall_hits(preds, gts, criterion, k, topk, num_predicates=P), "k")


# ------------------------------------------------------------------------------- single rules
def test_iou_keeps_maskrcnn_benchmark_plus_one():
    # boxlist_iou's TO_REMOVE = 1: [0,0,9,9] vs [0,0,9,4] -> 50 / (100 + 50 - 50) = 0.5 -> a hit;
    # without the +1 it would be 36 / 81 = 0.44 and a miss
    g = gt([[0, 1, 2]], [A], [B])
    p = pred([[0, 1, 2], [0, 1, 2]], [[0, 0, 9, 4], [0, 0, 9, 3]], [B, B], [0.9, 0.8])
    hits = sgb_hit_matrix(p, g, np.arange(2), "relationship")
    assert hits.tolist() == [[True], [False]]  # [0,0,9,3]: 40 / 100 = 0.4


def test_hit_needs_all_three_labels_and_both_boxes():
    g = gt([[0, 1, 2]], [A], [B])
    p = pred(
        [[0, 1, 2], [0, 1, 3], [4, 1, 2], [0, 1, 2], [0, 1, 2]],
        [A, A, A, FAR, A],
        [B, B, B, B, FAR],
        [0.9, 0.8, 0.7, 0.6, 0.5],
    )
    assert sgb_hit_matrix(p, g, np.arange(5), "relationship")[:, 0].tolist() == [True, False, False, False, False]


def test_phrase_uses_the_union_box():
    # subject box [0,0,29,29] vs A: IoU 100/900 -> relationship miss; union boxes identical -> phrase hit
    g = gt([[0, 1, 2]], [A], [B])
    p = pred([[0, 1, 2]], [[0, 0, 29, 29]], [B], [0.9])
    assert sgb([p], [g], criterion="relationship")["R@20"] == 0.0
    assert sgb([p], [g], criterion="phrase")["R@20"] == 100.0


def test_topk_prefix_in_score_order():
    # two pairs: the better-scored one is wrong, so R@1 = 0 and R@2 = 100 (one ground-truth row)
    g = gt([[0, 1, 2]], [A], [B])
    p = pred([[0, 3, 2], [0, 1, 2]], [C, A], [B, B], [0.9, 0.5])
    m = sgb([p], [g], topk=(1, 2))
    assert (m["R@1"], m["R@2"]) == (0.0, 100.0)


# ----------------------------------------------------------------- where SGB and Lu differ
def test_one_prediction_hits_two_duplicate_ground_truth_rows():
    g = gt([[0, 1, 2], [0, 1, 2]], [A, A], [B, B])  # the same relation annotated twice
    p = pred([[0, 1, 2]], [A], [B], [0.9])
    assert sgb([p], [g])["R@50"] == 100.0  # SGB: any prediction hits every matching row
    assert lu([p], [g])["R@50_k"] == 50.0  # Lu: one-to-one, the second row needs a second prediction


def test_per_image_mean_versus_total_over_the_split():
    # image 1: 4 relations, 1 found; image 2: 1 relation, found
    g1 = gt([[0, 1, 2], [0, 2, 2], [0, 3, 2], [0, 4, 2]], [A] * 4, [B] * 4)
    g2 = gt([[0, 1, 2]], [A], [B])
    p1 = pred([[0, 1, 2]], [A], [B], [0.9])
    p2 = pred([[0, 1, 2]], [A], [B], [0.9])
    assert sgb([p1, p2], [g1, g2])["R@50"] == pytest.approx(100.0 * (1 / 4 + 1) / 2)  # 62.5
    assert lu([p1, p2], [g1, g2])["R@50_k"] == pytest.approx(100.0 * 2 / 5)  # 40


def test_graph_constraint_is_k1_no_graph_constraint_is_free_k():
    # one pair annotated with two predicates; the model's best predicate (rank 0) is 1, the second 3
    g = gt([[0, 1, 2], [0, 3, 2]], [A, A], [B, B])
    p = pred([[0, 1, 2], [0, 3, 2]], [A, A], [B, B], [0.9, 0.8], pair_rank=[0, 1])
    assert sgb([p], [g], gc=True)["R@20"] == 50.0
    assert sgb([p], [g], gc=False)["ngR@20"] == 100.0
    # Lu's k = 1 and free k see the same rows; here the totals agree with SGB (one image)
    assert (lu([p], [g], k=1)["R@20_k"], lu([p], [g], k=0)["R@20_k"]) == (50.0, 100.0)
    # ngR@1: only the best (pair, predicate) -> 50
    assert sgb([p], [g], gc=False, topk=(1, 2))["ngR@1"] == 50.0


def test_no_graph_constraint_keeps_only_the_top_100():
    # the hit is the 120th (pair, predicate) score: ngR@200 is still 0 (SGB's argsort_desc[:100])
    labels = [[0, 4, 2]] * 119 + [[0, 1, 2]]
    p = pred(labels, [FAR] * 119 + [A], [B] * 120, np.linspace(1, 0.5, 120), pair_rank=[0] * 120)
    g = gt([[0, 1, 2]], [A], [B])
    assert sgb([p], [g], gc=False, topk=(200,))["ngR@200"] == 0.0
    assert sgb([p], [g], gc=True, topk=(200,))["R@200"] == 100.0


def test_images_without_ground_truth_or_predictions_are_left_out():
    g1 = gt([[0, 1, 2]], [A], [B])
    g_empty = gt(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 4)))
    g3 = gt([[0, 1, 2]], [A], [B])
    p1 = pred([[0, 1, 2]], [A], [B], [0.9])
    p2 = pred([[0, 1, 2]], [C], [B], [0.9])  # predictions but no ground truth
    p3 = pred(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 4)), [])  # ground truth, no predictions
    rec = sgb_recall([p1, p2, p3], [g1, g_empty, g3], "relationship", True, (20,), num_predicates=5)
    assert (rec.num_images, rec.skipped_no_gt, rec.skipped_no_pred) == (1, 1, 1)
    assert rec.metrics()["R@20"] == 100.0  # SGB: mean over the one evaluated image
    assert lu([p1, p2, p3], [g1, g_empty, g3], topk=(20,))["R@20_k"] == 50.0  # Lu: 1 of 2 rows


def test_mean_recall_averages_per_image_then_over_all_predicates():
    # P = 3. image 1: predicates [0, 0, 1], one 0-row found -> p0: 1/2, p1: 0; image 2: [0] found.
    # SGB: p0 = mean(0.5, 1) = 0.75, p1 = 0, p2 (absent) = 0 -> mR = 0.75 / 3 = 25%
    # Lu:  p0 = 2/3, p1 = 0/1 over the split, absent p2 not counted -> mR = (2/3 + 0) / 2 = 33.3%
    g1 = gt([[0, 0, 2], [0, 0, 3], [0, 1, 2]], [A, C, A], [B, B, C])
    g2 = gt([[0, 0, 2]], [A], [B])
    p1 = pred([[0, 0, 2]], [A], [B], [0.9])
    p2 = pred([[0, 0, 2]], [A], [B], [0.9])
    assert sgb([p1, p2], [g1, g2], P=3)["mR@20"] == pytest.approx(25.0)
    assert lu([p1, p2], [g1, g2], P=3)["mR@20_k"] == pytest.approx(100.0 / 3)


def test_zero_shot_recall_on_a_crafted_list():
    zs_list = np.array([[0, 1, 2], [5, 5, 5]])  # (subject, predicate, object), 0-based
    # image 1: two zero-shot rows, one found; image 2: one zero-shot row, found; image 3: none
    g1 = gt([[0, 1, 2], [0, 1, 2], [3, 1, 4]], [A, C, A], [B, B, B])
    g2 = gt([[0, 1, 2], [3, 1, 4]], [A, A], [B, B])
    g3 = gt([[3, 1, 4]], [A], [B])
    for g in (g1, g2, g3):
        g["zeroshot"] = zeroshot_rows(g["labels"], zs_list)
    assert g1["zeroshot"].tolist() == [True, True, False] and not g3["zeroshot"].any()
    p1 = pred([[0, 1, 2], [3, 1, 4]], [A, A], [B, B], [0.9, 0.8])
    p2 = pred([[0, 1, 2]], [A], [B], [0.9])
    p3 = pred([[3, 1, 4]], [A], [B], [0.9])
    m = sgb([p1, p2, p3], [g1, g2, g3])
    assert m["zR@20"] == pytest.approx(100.0 * (1 / 2 + 1) / 2)  # 75: images with zero-shot rows only
    assert lu([p1, p2, p3], [g1, g2, g3])["zsR@20_k"] == pytest.approx(100.0 * 2 / 3)  # Lu: 2 of 3 rows
    ng = sgb([p1, p2, p3], [g1, g2, g3], gc=False)
    assert ng["ng-zR@20"] == pytest.approx(75.0)


def test_sgb_zeroshot_file_columns_and_ids(tmp_path):
    path = tmp_path / "zs.pytorch"
    torch.save(torch.tensor([[1, 3, 2], [150, 1, 50]]), path)  # (subject, object, predicate), 1-based
    np.testing.assert_array_equal(load_sgb_zeroshot_triplets(str(path)), [[0, 1, 2], [149, 49, 0]])
    torch.save(torch.tensor([[0, 3, 2]]), path)
    with pytest.raises(ValueError, match=r"zs.pytorch: row 0 \[0, 3, 2\] has an id < 1"):
        load_sgb_zeroshot_triplets(str(path))
    torch.save(torch.zeros(4, 2, dtype=torch.long), path)
    with pytest.raises(ValueError, match=r"expected a \[Z, 3\] tensor .* found \(4, 2\)"):
        load_sgb_zeroshot_triplets(str(path))
    path.write_bytes(b"not a tensor")
    with pytest.raises(ValueError, match="zs.pytorch: not a torch-saved tensor"):
        load_sgb_zeroshot_triplets(str(path))


def test_real_sgb_zeroshot_list(shared_vrd):
    path = shared_vrd / "vg150" / "zeroshot_triplet.pytorch"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    zs = load_sgb_zeroshot_triplets(str(path))
    # SOURCE.md: 5971 rows, VG150 ids 1..150 objects, 1..50 predicates
    assert zs.shape == (5971, 3)
    assert zs.min() == 0 and zs[:, [0, 2]].max() == 149 and zs[:, 1].max() == 49


def test_evaluate_records_sgb_names_and_gold_box_modes():
    g = gt([[0, 1, 2]], [A], [B])
    p = pred([[0, 1, 2]], [A], [B], [0.9])
    res, counts = evaluate_records_sgb([p], [g], [("relationship", "relationship"), ("phrase", "phrase")])
    assert list(res["relationship"]) == [f"{m}@{k}" for m in ("R", "mR", "ngR", "ng-mR") for k in (20, 50, 100)]
    assert counts["phrase"] == {"images": 1, "skipped_no_gt": 0, "skipped_no_pred": 0}
    # Lu's results on the same input, for the record: the same 100 with one relation
    assert evaluate_records([p], [g], k_values=(1,))["relationship"]["R@50_k1"] == 100.0


# ---------------------------------------------------------------------------- real Lu files
def test_real_vrd_perfect_predictions_give_100_under_sgb(shared_vrd, tmp_path):
    from tools_loader import load_tool

    eval_results = load_tool("eval_results")
    lu_dir = shared_vrd / "lu2016"
    gt_mat, path_mat = lu_dir / "evaluation" / "gt.mat", lu_dir / "data" / "imagePath.mat"
    if not gt_mat.is_file():
        pytest.skip(f"{gt_mat} not found")
    names, gts = load_lu_ground_truth(str(gt_mat), str(path_mat))
    # every ground-truth row as a prediction, each its pair's best (pair_rank 0): the graph
    # constraint keeps them all; at most 41 relations per image, so K = 50 and 100 see them all
    images = [
        {
            "image_id": i,
            "file_name": n,
            "record": {
                **g,
                "scores": np.linspace(1, 0.5, len(g["labels"])),
                "pair_rank": np.zeros(len(g["labels"]), np.int64),
            },
        }
        for i, (n, g) in enumerate(zip(names, gts))
    ]
    res_path, out = str(tmp_path / "res.json"), str(tmp_path / "scores.json")
    write_results_json(res_path, images)
    eval_results.main([res_path, "--gt-mat", str(gt_mat), "--protocol", "sgb", "--json", out])
    scores = json.load(open(out))
    assert scores["protocol"] == "sgb"
    for task in ("relationship", "phrase"):
        for metric in ("R@50", "R@100", "ngR@50", "ngR@100", "zR@100", "ng-zR@100"):
            assert scores[f"{task}_{metric}"] == pytest.approx(100.0), (task, metric)
        # R@20: the 8 images with more than 20 relations cannot be complete in 20 predictions
        assert 90.0 < scores[f"{task}_R@20"] < 100.0
        # mR@100: 63 of the 70 predicates occur in the test split; SGB counts the other 7 as 0
        assert scores[f"{task}_mR@100"] == pytest.approx(100.0 * 63 / 70)


def test_real_vrd_lu_mat_results_under_sgb(shared_vrd, tmp_path):
    import scipy.io
    from tools_loader import load_tool

    eval_results = load_tool("eval_results")
    lu_dir = shared_vrd / "lu2016"
    gt_mat, path_mat = lu_dir / "evaluation" / "gt.mat", lu_dir / "data" / "imagePath.mat"
    if not gt_mat.is_file():
        pytest.skip(f"{gt_mat} not found")
    _, gts = load_lu_ground_truth(str(gt_mat), str(path_mat))

    def cells(arrays):
        c = np.empty((1, len(arrays)), dtype=object)
        c[0, :] = arrays
        return c

    res_path, out = str(tmp_path / "res.mat"), str(tmp_path / "scores.json")
    scipy.io.savemat(
        res_path,
        {
            "rlp_labels_ours": cells([g["labels"].astype(np.float64) + 1 for g in gts]),
            "rlp_confs_ours": cells([np.linspace(1, 0.5, len(g["labels"])).reshape(-1, 1) for g in gts]),
            "sub_bboxes_ours": cells([g["sub_boxes"] for g in gts]),
            "obj_bboxes_ours": cells([g["obj_boxes"] for g in gts]),
        },
    )
    eval_results.main([res_path, "--gt-mat", str(gt_mat), "--protocol", "sgb", "--json", out])
    scores = json.load(open(out))
    for task in ("relationship", "phrase"):
        # no graph constraint: every row of the file competes -> perfect
        assert scores[f"{task}_ngR@50"] == pytest.approx(100.0)
        assert scores[f"{task}_ngR@100"] == pytest.approx(100.0)
    # graph constraint: a .mat file has no pair_rank, so a pair is its two boxes and keeps only its
    # best-scored predicate; VRD pairs annotated with several predicates then lose the others
    assert 50.0 < scores["relationship_R@100"] < 100.0


def _two_image_dataset(tmp_path):
    """A registered two-image dataset, image 0 with 4 relations (1 found), image 1 with 1
    relation (found), and a results file finding them: SGB 62.5 per image, Lu 40 over the split.
    Returns (dataset name, results path, the evaluator entries of the results)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from vrd_d2.evaluation.offline import load_predictions

    name = "vrd_d2_test_sgb_tool"
    boxes = [A, B, C, FAR]
    if name not in DatasetCatalog.list():

        def load():
            anns = [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c} for b, c in zip(boxes, [0, 1, 2, 0])]
            return [
                {
                    "file_name": "im0.jpg",
                    "image_id": 0,
                    "height": 200,
                    "width": 200,
                    "annotations": anns,
                    "relations": np.array([[0, 1, 0], [0, 2, 1], [1, 2, 0], [3, 1, 1]]),
                },
                {
                    "file_name": "im1.jpg",
                    "image_id": 1,
                    "height": 200,
                    "width": 200,
                    "annotations": anns,
                    "relations": np.array([[0, 1, 1]]),
                },
            ]

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"], predicate_classes=["p", "q"])
    row = {"subject_box": A, "object_box": B, "subject": 0, "object": 1, "score": 0.9, "pair_rank": 0}
    images = [
        {"image_id": 0, "file_name": "im0.jpg", "relations": [dict(row, predicate=0)]},
        {"image_id": 1, "file_name": "im1.jpg", "relations": [dict(row, predicate=1)]},
    ]
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"images": images}))
    return name, res, load_predictions(str(res), None, DatasetCatalog.get(name), name)


def test_eval_results_tool_writes_sgb_scores_for_a_dataset(tmp_path):
    """No shared data needed: see _two_image_dataset."""
    from tools_loader import load_tool

    name, res, _ = _two_image_dataset(tmp_path)
    eval_results = load_tool("eval_results")
    for protocol, expected in (("sgb", 62.5), ("lu", 40.0)):
        out = str(tmp_path / f"{protocol}.json")
        eval_results.main([str(res), "--dataset", name, "--protocol", protocol, "--json", out])
        scores = json.load(open(out))
        assert scores["protocol"] == protocol
        assert scores["relationship_R@50"] == pytest.approx(expected)
        assert scores["phrase_R@100"] == pytest.approx(expected)
    assert {f"{t}_R@{k}" for t in ("relationship", "phrase") for k in (20, 50, 100)} <= set(
        json.load(open(tmp_path / "sgb.json"))
    )


def test_both_protocols_in_one_pass_equal_the_single_protocol_runs(tmp_path):
    """protocol "both": Lu's results under "lu", SGB's under "sgb", each equal to its own run."""
    from tools_loader import load_tool

    name, res, entries = _two_image_dataset(tmp_path)
    single = {}
    for protocol in ("lu", "sgb", "both"):
        ev = VRDEvaluator(name, distributed=False, protocol=protocol, output_dir=str(tmp_path / protocol))
        assert ev.protocol == protocol
        single[protocol] = ev.evaluate_predictions(copy.deepcopy(entries))
    both = single["both"]
    assert list(both) == ["lu", "sgb"]
    assert both["lu"] == single["lu"] and both["sgb"] == single["sgb"]
    assert set(both["lu"]) == set(both["sgb"]) == {"relationship", "phrase"}
    # the hand-worked numbers: Lu 2/5 over the split, SGB (1/4 + 1)/2 per image; K of each protocol
    assert both["lu"]["relationship"]["R@50_k1"] == pytest.approx(40.0)
    assert both["sgb"]["relationship"]["R@20"] == pytest.approx(62.5)
    assert both["sgb"]["phrase"]["ngR@100"] == pytest.approx(62.5)
    assert "R@20_k1" not in both["lu"]["relationship"] and "R@20_k1" not in both["sgb"]["relationship"]
    saved = json.load(open(tmp_path / "both" / "vrd_evaluation.json"))
    assert saved["protocol"] == "both" and saved["results"] == json.loads(json.dumps(both))
    assert saved["topk_values"] == [50, 100] and saved["sgb_topk_values"] == [20, 50, 100]
    assert saved["sgb_images"]["relationship"] == {"images": 2, "skipped_no_gt": 0, "skipped_no_pred": 0}
    table = ev.format_results(both)
    assert "R@50_k1" not in table and "k/pair" in table and "constraint" in table
    assert table.index("Lu et al.:") < table.index("k/pair") < table.index("Scene-Graph-Benchmark:")
    # the tool: Lu's flat scores, then SGB's prefixed "sgb_"
    out = str(tmp_path / "both.json")
    scores = load_tool("eval_results").main([str(res), "--dataset", name, "--protocol", "both", "--json", out])
    assert scores["relationship_R@50"] == pytest.approx(40.0)
    assert scores["sgb_relationship_R@50"] == pytest.approx(62.5)
    assert json.load(open(out))["k_per_pair"] == 0
