"""Relation evaluation: hand-worked recall cases, real VRD gt.mat checks, distributed gather."""

import os
import time

import numpy as np
import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402
from conftest import SHARED_VRD_DIR as SHARED  # noqa: E402

from vrd_d2.evaluation import (
    VRDEvaluator,
    best_k_from_results,
    box_iou_inclusive,
    compute_pair_rank,
    count_recall_hits,
    evaluate_records,
    load_lu_ground_truth,
    match_relations,
    select_best_k,
    validate_prediction,
)

GT_MAT = os.path.join(SHARED, "lu2016", "evaluation", "gt.mat")
ZS_MAT = os.path.join(SHARED, "lu2016", "evaluation", "zeroShot.mat")
PATH_MAT = os.path.join(SHARED, "lu2016", "data", "imagePath.mat")

A = [0.0, 0.0, 9.0, 9.0]  # 10 x 10 pixels (inclusive convention)
B = [20.0, 20.0, 29.0, 29.0]


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
    r["pair_rank"] = None if pair_rank is None else np.array(pair_rank, np.int64)
    return r


def recall(preds, gts, criterion="relationship", k=0, topk=(50, 100)):
    c = count_recall_hits(preds, gts, criterion, k, topk, num_predicates=5)
    return c.hits.tolist(), c.num_gt


# ------------------------------------------------------------------------------------------ IoU
def test_iou_plus_one_convention_by_hand():
    # [0,0,9,9] vs [5,0,14,9]: inter 5x10=50, union 100+100-50=150 -> 1/3 (no +1 would give 4x9/...)
    iou = box_iou_inclusive(np.array([A]), np.array([[5.0, 0, 14, 9], [10.0, 0, 19, 9], A]))
    np.testing.assert_allclose(iou, [[1 / 3, 0.0, 1.0]])


def test_threshold_exactly_half_counts_with_plus_one():
    # gt [0,0,9,9] (100 px); pred [0,0,9,4]: inclusive area 50, inter 50, union 100 -> IoU 0.5
    # exactly (hit: Lu uses >=). Without +1 it would be 45/(81+36...) < 0.5 and miss.
    half = [0.0, 0.0, 9.0, 4.0]
    g = [gt([[1, 2, 3]], [A], [B])]
    assert recall([pred([[1, 2, 3]], [half], [B], [1.0])], g) == ([1, 1], 1)
    # one pixel less -> IoU 45/100 < 0.5: miss
    assert recall([pred([[1, 2, 3]], [[0.0, 0, 8, 4]], [B], [1.0])], g) == ([0, 0], 1)
    # the phrase criterion uses the union box: subject half-sized but inside the object span
    assert recall([pred([[1, 2, 3]], [half], [B], [1.0])], g, "phrase") == ([1, 1], 1)


# -------------------------------------------------------------------------------------- matching
def test_two_predictions_compete_for_one_ground_truth():
    g = [gt([[1, 2, 3]], [A], [B])]
    p = [pred([[1, 2, 3], [1, 2, 3]], [A, A], [B, B], [0.9, 0.8])]
    assert recall(p, g) == ([1, 1], 1)  # the second is a false positive
    m = match_relations(p[0]["labels"], p[0]["sub_boxes"], p[0]["obj_boxes"], **_gt_kwargs(g[0]))
    assert m.tolist() == [0, -1]


def _gt_kwargs(g):
    return {"gt_labels": g["labels"], "gt_sub": g["sub_boxes"], "gt_obj": g["obj_boxes"]}


def test_best_overlap_is_taken_not_first():
    # two gt of the same triplet; the prediction overlaps gt 1 better -> takes gt 1; a second,
    # weaker prediction that only fits gt 1 then misses (greedy, as Lu): 1 hit of 2.
    g1 = [0.0, 0.0, 9.0, 5.0]  # IoU with A = 60/100
    g = [gt([[1, 2, 3], [1, 2, 3]], [g1, A], [B, B])]
    p = pred([[1, 2, 3], [1, 2, 3]], [A, [0.0, 0, 9, 9.5]], [B, B], [0.9, 0.8])
    m = match_relations(p["labels"], p["sub_boxes"], p["obj_boxes"], **_gt_kwargs(g[0]))
    assert m.tolist() == [1, 0]  # second prediction IoU with g1 = 60/105 >= .5 -> takes gt 0


def test_duplicate_ground_truth_needs_two_predictions():
    g = [gt([[1, 2, 3], [1, 2, 3]], [A, A], [B, B])]  # exact duplicates, both counted
    assert recall([pred([[1, 2, 3]], [A], [B], [1.0])], g) == ([1, 1], 2)
    assert recall([pred([[1, 2, 3]] * 2, [A, A], [B, B], [1.0, 0.5])], g) == ([2, 2], 2)


def test_ties_in_confidence_keep_input_order():
    # 51 predictions with equal score; only the last one is correct. Stable sort (MATLAB) keeps
    # input order, so top-50 excludes it and top-100 includes it.
    labels = [[0, 0, 0]] * 50 + [[1, 2, 3]]
    p = [pred(labels, [A] * 51, [B] * 51, [0.5] * 51)]
    g = [gt([[1, 2, 3]], [A], [B])]
    assert recall(p, g) == ([0, 1], 1)
    # with the correct one first, top-50 has it
    p = [pred(labels[::-1], [A] * 51, [B] * 51, [0.5] * 51)]
    assert recall(p, g) == ([1, 1], 1)


def test_equal_overlap_takes_lowest_ground_truth_index():
    g = gt([[1, 2, 3], [1, 2, 3]], [A, A], [B, B])
    p = pred([[1, 2, 3]], [A], [B], [1.0])
    assert match_relations(p["labels"], p["sub_boxes"], p["obj_boxes"], **_gt_kwargs(g)).tolist() == [0]


def test_labels_must_match_all_three():
    g = [gt([[1, 2, 3]], [A], [B])]
    for wrong in ([0, 2, 3], [1, 0, 3], [1, 2, 0]):
        assert recall([pred([wrong], [A], [B], [1.0])], g) == ([0, 0], 1)


def test_k_per_pair():
    # one box pair, gt predicates 2 and 4; the model ranks predicate 1 (wrong) first.
    g = [gt([[1, 2, 3], [1, 4, 3]], [A, A], [B, B])]
    p = [pred([[1, 1, 3], [1, 2, 3], [1, 4, 3]], [A] * 3, [B] * 3, [0.9, 0.8, 0.7], [0, 1, 2])]
    assert recall(p, g, k=1) == ([0, 0], 2)
    assert recall(p, g, k=2) == ([1, 1], 2)
    assert recall(p, g, k=0) == ([2, 2], 2)


def test_image_without_predictions_and_image_without_ground_truth():
    g = [gt([[1, 2, 3]], [A], [B]), gt(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 4)))]
    p = [None, pred([[1, 2, 3]], [A], [B], [1.0])]  # the 2nd image's prediction is a false positive
    assert recall(p, g) == ([0, 0], 1)
    p = [pred(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 4)), []), p[1]]
    assert recall(p, g) == ([0, 0], 1)


def test_zeroshot_only_zeroshot_gt_can_take_a_prediction():
    # same triplet twice, only the second gt flagged zero-shot (artificial): Lu deletes the
    # seen rows first, so the single prediction must match the zero-shot one.
    g = [gt([[1, 2, 3], [1, 2, 3]], [A, A], [B, B], zeroshot=[False, True])]
    c = count_recall_hits([pred([[1, 2, 3]], [A], [B], [1.0])], g, "relationship", 0, (50,), 5)
    assert c.hits.tolist() == [1] and c.zs_hits.tolist() == [1] and c.num_zs_gt == 1


def test_mean_recall_and_matlab_denominator():
    g = [gt([[1, 2, 3], [1, 2, 3], [1, 4, 3]], [A, A, A], [B, B, B])]
    p = [pred([[1, 4, 3]], [A], [B], [1.0])]
    res = evaluate_records(p, g, k_values=(0,), num_predicates=5)["relationship"]
    assert res["R@50_kfree"] == pytest.approx(100 / 3)
    assert res["mR@50_kfree"] == pytest.approx((0 + 100) / 2)  # predicate 2: 0/2, predicate 4: 1/1
    # MATLAB length() of a 1x3 label matrix is 3: one gt row counts as 3
    g1 = [gt([[1, 2, 3]], [A], [B])]
    c = count_recall_hits(
        [pred([[1, 2, 3]], [A], [B], [1.0])], g1, "relationship", 0, (50,), 5, denominator="matlab_length"
    )
    assert c.num_gt == 3 and c.hits.tolist() == [1]


def test_pair_rank_from_boxes():
    r = compute_pair_rank(np.array([A, A, B, A]), np.array([B, B, A, B]), np.array([0.1, 0.5, 0.2, 0.5]))
    assert r.tolist() == [2, 0, 0, 1]


def test_select_best_k():
    assert select_best_k({1: 10.0, 10: 12.0, 0: 12.0}) == 10  # tie -> smaller, free k largest
    res = {"relationship": {"R@50_k1": 5.0, "R@50_k10": 7.0, "R@50_kfree": 6.0, "R@100_k1": 9.0}}
    assert best_k_from_results(res, "relationship", "R@50") == 10
    out = evaluate_records(
        [pred([[1, 2, 3]], [A], [B], [1.0], [0])],
        [gt([[1, 2, 3]], [A], [B])],
        k_values=(1, 0),
        best_k=3,
        num_predicates=5,
    )
    assert out["relationship"]["best_k"] == 3 and out["relationship"]["R@50_kbest"] == 100.0
    assert "R@50_k3" not in out["relationship"]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "field,row,value,message",
    [
        ("scores", 1, np.nan, "row 1: score is nan"),
        ("sub_boxes", 1, [5.0, 0, 4, 9], "row 1: subject_box"),
        ("labels", 1, [1, 99, 3], "row 1: predicate id 99 outside"),
        ("labels", 1, [100, 2, 3], "row 1: subject id 100 outside"),
    ],
)
def test_bad_predictions_name_image_and_row(field, row, value, message):
    p = pred([[1, 2, 3], [1, 2, 3]], [A, A], [B, B], [0.9, 0.8], [0, 1])
    p[field][row] = value
    with pytest.raises(ValueError, match="image 7.*" + message.replace("(", r"\(")):
        validate_prediction(p, "image 7 (x.jpg)", num_objects=100, num_predicates=70)


# ------------------------------------------------------------------------------- real VRD gt.mat
def _require_gt():
    if not (os.path.isfile(GT_MAT) and os.path.isfile(PATH_MAT)):
        pytest.skip(f"Lu et al.'s gt.mat not found under {SHARED} (set VRD_D2_SHARED_DATA)")


@pytest.fixture(scope="module")
def lu_gt():
    _require_gt()
    return load_lu_ground_truth(GT_MAT, PATH_MAT, ZS_MAT)


def _perfect(gts, keep=lambda j: True):
    preds = []
    for g in gts:
        idx = [j for j in range(len(g["labels"])) if keep(j)]
        n = len(idx)
        scores = np.linspace(1.0, 0.5, n) if n else np.zeros(0)
        preds.append(
            pred(
                g["labels"][idx].reshape(-1, 3),
                g["sub_boxes"][idx].reshape(-1, 4),
                g["obj_boxes"][idx].reshape(-1, 4),
                scores,
            )
        )
        preds[-1]["pair_rank"] = compute_pair_rank(preds[-1]["sub_boxes"], preds[-1]["obj_boxes"], scores)
    return preds


def test_real_vrd_perfect_predictions_score_100(lu_gt):
    names, gts = lu_gt
    assert len(gts) == 1000 and sum(len(g["labels"]) for g in gts) == 7638
    assert sum(int(g["zeroshot"].sum()) for g in gts) == 1169
    preds = _perfect(gts)
    t0 = time.perf_counter()
    res = evaluate_records(preds, gts, k_values=(1, 10, 0), num_predicates=70)
    print(
        f"\nVRD-size evaluation (1000 images, 3 k x 2 tasks, gt rows as predictions): "
        f"{time.perf_counter() - t0:.2f}s"
    )
    for task in ("relationship", "phrase"):
        for m in ("R@50", "R@100", "mR@50", "mR@100", "zsR@50", "zsR@100"):
            assert res[task][f"{m}_kfree"] == pytest.approx(100.0), (task, m)
            assert res[task][f"{m}_k10"] == pytest.approx(100.0), (task, m)  # <= 5 per pair in VRD
        assert res[task]["R@50_k1"] < 100.0  # pairs with several predicates lose some at k=1


def test_real_vrd_every_second_relation_scores_half(lu_gt):
    _, gts = lu_gt
    preds = _perfect(gts, keep=lambda j: j % 2 == 0)
    expected = 100.0 * sum((len(g["labels"]) + 1) // 2 for g in gts) / 7638  # hand count
    res = evaluate_records(preds, gts, k_values=(0,), num_predicates=70)
    for task in ("relationship", "phrase"):
        assert res[task]["R@100_kfree"] == pytest.approx(expected)
        # the rounding: an image with an odd count keeps half a relation more than half
        odd = sum(len(g["labels"]) % 2 for g in gts)
        assert abs(res[task]["R@100_kfree"] - 50.0) <= 100.0 * odd / (2 * 7638) + 1e-9


def test_vrd_size_timing_with_100_predictions(lu_gt):
    """Timing print for the issue: 1000 images x 100 noisy predictions (not asserted)."""
    _, gts = lu_gt
    rng = np.random.default_rng(0)
    preds = []
    for g in gts:
        n = len(g["labels"])
        src = rng.integers(0, max(n, 1), 100)
        base = g["sub_boxes"][src] if n else np.tile([[0, 0, 50, 50.0]], (100, 1))
        obase = g["obj_boxes"][src] if n else base
        lab = g["labels"][src] if n else np.zeros((100, 3), np.int64)
        lab = np.where(rng.random((100, 3)) < 0.3, rng.integers(0, 70, (100, 3)), lab)
        jit = rng.normal(0, 8, (100, 4))
        preds.append(pred(lab, base + jit, obase + jit[:, ::-1], rng.random(100), rng.integers(0, 3, 100)))
    t0 = time.perf_counter()
    evaluate_records(preds, gts, k_values=(1, 10, 0), num_predicates=70)
    print(
        f"\nVRD-size evaluation, 1000 images x 100 predictions, k in (1,10,free), relationship + "
        f"phrase, R/mR/zsR @50/100: {time.perf_counter() - t0:.2f}s"
    )


# ---------------------------------------------------------------------------- evaluator + gloo
def _register_toy(name="vrd_d2_test_toy_eval"):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    if name in DatasetCatalog.list():
        return name
    rng = np.random.default_rng(1)

    def load():
        recs = []
        for i in range(6):
            boxes = rng_boxes = np.random.default_rng(i).uniform(0, 100, (4, 2))
            boxes = np.concatenate([rng_boxes, rng_boxes + 20], 1)
            anns = [
                {"bbox": b.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c)}
                for b, c in zip(boxes, [0, 1, 2, i % 3])
            ]
            rel = np.array([[0, 1, i % 2], [2, 3, 1], [1, 0, 0]][: 1 + i % 3], np.int64)
            recs.append(
                {
                    "file_name": f"img{i}.jpg",
                    "image_id": i,
                    "height": 200,
                    "width": 200,
                    "annotations": anns,
                    "relations": rel,
                    "relations_complete": np.concatenate([rel, [[3, 2, 1]]]),
                }
            )
        return recs

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"], predicate_classes=["p", "q"], evaluator_type="vrd")
    del rng
    return name


def _toy_outputs(name):
    """Model-style outputs: ground truth of even images, shifted garbage for odd images."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances

    from vrd_d2.evaluation import dataset_ground_truth

    inputs, outputs = [], []
    for d in DatasetCatalog.get(name):
        g = dataset_ground_truth(d)
        n = len(g["labels"])
        shift = 0.0 if d["image_id"] % 2 == 0 else 50.0
        r = Instances((d["height"], d["width"]))
        r.subject_boxes = Boxes(torch.tensor(g["sub_boxes"] + shift, dtype=torch.float32))
        r.object_boxes = Boxes(torch.tensor(g["obj_boxes"], dtype=torch.float32))
        r.subject_classes = torch.tensor(g["labels"][:, 0])
        r.predicate_classes = torch.tensor(g["labels"][:, 1])
        r.object_classes = torch.tensor(g["labels"][:, 2])
        r.scores = torch.linspace(1, 0.5, n)
        r.pair_rank = torch.zeros(n, dtype=torch.long)
        inputs.append({"image_id": d["image_id"], "file_name": d["file_name"]})
        outputs.append({"relations": r})
    return inputs, outputs


def test_evaluator_on_toy_dataset(tmp_path):
    name = _register_toy()
    inputs, outputs = _toy_outputs(name)
    ev = VRDEvaluator(name, output_dir=str(tmp_path), distributed=False)
    ev.reset()
    ev.process(inputs, outputs)
    res = ev.evaluate()
    # images 0,2,4 are exact (1 + 3 + 2 relations), images 1,3,5 miss (2 + 1 + 3): 6 / 12
    assert res["relationship"]["R@50_k1"] == pytest.approx(50.0)
    # complete gt adds one (unpredicted) relation per image: 6 / 18
    assert res["relationship_complete"]["R@100_kfree"] == pytest.approx(100 * 6 / 18)
    assert set(res) == {"relationship", "phrase", "relationship_complete", "phrase_complete"}
    assert (tmp_path / "vrd_evaluation.json").is_file()
    assert (tmp_path / "relations_results.json").is_file()
    ev2 = VRDEvaluator(name, mode="predcls", distributed=False)
    ev2.process(inputs, outputs)
    assert list(ev2.evaluate()) == ["predcls", "predcls_complete"]


def _dist_worker(out_path):
    """Run in each of 2 gloo processes by launch_cpu: evaluate half of the images, gather on rank 0."""
    from detectron2.utils import comm

    torch.set_num_threads(1)
    rank, world = comm.get_rank(), comm.get_world_size()
    name = _register_toy()
    inputs, outputs = _toy_outputs(name)
    ev = VRDEvaluator(name, distributed=True)
    ev.reset()
    ev.process(inputs[rank::world], outputs[rank::world])  # each process gets half the images
    res = ev.evaluate()
    if rank == 0:
        torch.save(dict(res), out_path)
    else:
        assert res == {}


def test_distributed_gloo_equals_single_process(tmp_path):
    from vrd_d2.engine import launch_cpu

    name = _register_toy()
    inputs, outputs = _toy_outputs(name)
    ev = VRDEvaluator(name, distributed=False)
    ev.process(inputs, outputs)
    single = ev.evaluate()
    out = str(tmp_path / "dist.pth")
    launch_cpu(_dist_worker, 2, args=(out,))
    dist_res = torch.load(out, weights_only=False)
    assert dist_res == dict(single)


def test_evaluator_sgb_protocol_from_config(tmp_path, tiny_cfg):
    import json

    name = _register_toy()
    inputs, outputs = _toy_outputs(name)
    cfg = tiny_cfg("Shapes/geometry_only.yaml", "MODEL.VRD.MODE", "sgdet", "MODEL.VRD.TEST.PROTOCOL", "sgb")
    ev = VRDEvaluator(cfg, name, output_dir=str(tmp_path), distributed=False)
    assert ev.protocol == "sgb"
    ev.process(inputs, outputs)
    res = ev.evaluate()
    assert set(res) == {"relationship", "phrase"}
    # per-image recall: images 0, 2, 4 exact (1.0), images 1, 3, 5 miss (0.0) -> 50
    assert res["relationship"]["R@20"] == pytest.approx(50.0)
    assert res["relationship"]["ngR@100"] == pytest.approx(50.0)
    # mR, SGB: predicate 0 per image (0: 1, 2: 1, 4: 1, 5: 0) -> 0.75, predicate 1 (1: 0, 2: 1,
    # 3: 0, 4: 1, 5: 0) -> 0.4; mean 57.5. Lu, over the split: 4/5 and 2/7 -> 54.29
    assert res["relationship"]["mR@20"] == pytest.approx(57.5)
    lu = VRDEvaluator(name, distributed=False, protocol="lu")
    lu.process(inputs, outputs)
    assert lu.evaluate()["relationship"]["mR@50_k1"] == pytest.approx(100 * (4 / 5 + 2 / 7) / 2)
    saved = json.load(open(tmp_path / "vrd_evaluation.json"))
    assert saved["protocol"] == "sgb"
    assert saved["sgb_images"]["relationship"] == {"images": 6, "skipped_no_gt": 0, "skipped_no_pred": 0}
    # "auto" keeps Lu's protocol for this (non-VG) dataset
    auto = VRDEvaluator(tiny_cfg("Shapes/geometry_only.yaml"), name, distributed=False)
    assert auto.protocol == "lu"


def test_evaluator_both_protocols_from_config(tiny_cfg):
    """MODEL.VRD.TEST.PROTOCOL both: Lu's results (with the _complete tasks) under "lu", SGB's
    under "sgb", each equal to its single-protocol run."""
    name = _register_toy()
    inputs, outputs = _toy_outputs(name)
    runs = {}
    for protocol in ("lu", "sgb", "both"):
        cfg = tiny_cfg("Shapes/geometry_only.yaml", "MODEL.VRD.MODE", "sgdet", "MODEL.VRD.TEST.PROTOCOL", protocol)
        ev = VRDEvaluator(cfg, name, distributed=False)
        ev.process(inputs, outputs)
        runs[protocol] = ev.evaluate()
    both = runs["both"]
    assert list(both) == ["lu", "sgb"]
    assert both["lu"] == runs["lu"] and both["sgb"] == runs["sgb"]
    assert list(both["lu"]) == ["relationship", "phrase", "relationship_complete", "phrase_complete"]
    assert list(both["sgb"]) == ["relationship", "phrase"]
    # the hand-worked figures of test_evaluator_sgb_protocol_from_config, side by side
    assert both["sgb"]["relationship"]["mR@20"] == pytest.approx(57.5)
    assert both["lu"]["relationship"]["mR@50_k1"] == pytest.approx(100 * (4 / 5 + 2 / 7) / 2)
    # tools/train_net.py's evaluator reads the protocol (and the SGB zero-shot list) from the config
    from vrd_d2.engine import Trainer

    cfg = tiny_cfg("Shapes/geometry_only.yaml", "MODEL.VRD.TEST.PROTOCOL", "both", "MODEL.VRD.TEST.K_PER_PAIR", "[1]")
    ev = Trainer.build_evaluator(cfg, name)
    assert ev.protocol == "both" and ev._k_values == (1,) and ev._mode == cfg.MODEL.VRD.MODE
