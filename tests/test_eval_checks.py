"""Evaluation that cannot be silently wrong: images without predictions count as misses (or are
left out only when asked), the evaluator's arguments are range-checked, results files that
declare another dataset or format, and Lu .mat cells of the wrong shape, are refused before any
image is scored."""

import json
import logging

import numpy as np
import pytest
from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2.evaluation import VRDEvaluator, write_results_json

eval_results = load_tool("eval_results")

TOY = "vrd_d2_test_eval_checks"
# relations per image of the toy split (image i has 1 + i % 3): 1, 2, 3, 1, 2, 3 -> 12 in all
RELATIONS = [1 + i % 3 for i in range(6)]


def _register_toy():
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    if TOY in DatasetCatalog.list():
        return TOY

    def load():
        recs = []
        for i in range(6):
            corners = np.random.default_rng(i).uniform(0, 100, (4, 2))
            boxes = np.concatenate([corners, corners + 20], 1)
            anns = [
                {"bbox": b.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": c}
                for b, c in zip(boxes, [0, 1, 2, i % 3])
            ]
            rel = np.array([[0, 1, i % 2], [2, 3, 1], [1, 0, 0]][: RELATIONS[i]], np.int64)
            recs.append({"file_name": f"img{i}.jpg", "image_id": i, "height": 200, "width": 200,
                         "annotations": anns, "relations": rel})  # fmt: skip
        return recs

    DatasetCatalog.register(TOY, load)
    MetadataCatalog.get(TOY).set(thing_classes=["a", "b", "c"], predicate_classes=["p", "q"], evaluator_type="vrd")
    return TOY


def _perfect_entries(image_ids):
    """Evaluator entries predicting each listed image's ground truth exactly."""
    from detectron2.data import DatasetCatalog

    from vrd_d2.evaluation import dataset_ground_truth

    out = []
    for d in DatasetCatalog.get(_register_toy()):
        if d["image_id"] not in image_ids:
            continue
        g = dataset_ground_truth(d)
        n = len(g["labels"])
        rec = dict(g, scores=np.linspace(1, 0.5, n), pair_rank=np.zeros(n, np.int64))
        out.append({"image_id": d["image_id"], "file_name": d["file_name"], "record": rec})
    return out


# ------------------------------------------------------------------------------ missing images
def test_missing_images_count_as_misses_by_default(tmp_path, caplog):
    name = _register_toy()
    ev = VRDEvaluator(name, distributed=False, output_dir=str(tmp_path), save_predictions=False)
    with caplog.at_level(logging.WARNING, logger="vrd_d2.evaluation.vrd_evaluation"):
        res = ev.evaluate_predictions(_perfect_entries({0, 1}))
    # images 0 and 1 exact (1 + 2 relations) of 12 in the split
    assert res["relationship"]["R@50_kfree"] == pytest.approx(100 * 3 / 12)
    assert res["phrase"]["R@100_k1"] == pytest.approx(100 * 3 / 12)
    assert ev.missing_images == 4
    assert "missing_images=4" in caplog.text
    saved = json.loads((tmp_path / "vrd_evaluation.json").read_text())
    assert saved["missing_images"] == 4 and saved["num_images"] == 6 and saved["num_gt_relations"] == 12


def test_only_present_images_scores_the_rest():
    name = _register_toy()
    ev = VRDEvaluator(name, distributed=False, only_present_images=True)
    res = ev.evaluate_predictions(_perfect_entries({0, 1}))
    assert res["relationship"]["R@50_kfree"] == pytest.approx(100.0)
    assert ev.missing_images == 4


def test_sgb_missing_images_are_zero_recall_images():
    name = _register_toy()
    ev = VRDEvaluator(name, distributed=False, protocol="sgb")
    # per-image means: two images at 1.0, four missing at 0.0
    assert ev.evaluate_predictions(_perfect_entries({0, 1}))["relationship"]["R@20"] == pytest.approx(100 * 2 / 6)
    present = VRDEvaluator(name, distributed=False, protocol="sgb", only_present_images=True)
    assert present.evaluate_predictions(_perfect_entries({0, 1}))["relationship"]["R@20"] == pytest.approx(100.0)


def test_nothing_missing_keeps_the_numbers():
    name = _register_toy()
    all_ids = set(range(6))
    a = VRDEvaluator(name, distributed=False).evaluate_predictions(_perfect_entries(all_ids))
    b = VRDEvaluator(name, distributed=False, only_present_images=True).evaluate_predictions(_perfect_entries(all_ids))
    assert a == b and a["relationship"]["R@50_k1"] == pytest.approx(100.0)


def test_eval_results_tool_only_present_images(tmp_path):
    name = _register_toy()
    path = str(tmp_path / "partial.json")
    write_results_json(path, _perfect_entries({0, 1}), name)
    with pytest.raises(ValueError, match=r"partial.json: 2 images, but the ground truth has 6.*--only-present-images"):
        eval_results.main([path, "--dataset", name])
    out = tmp_path / "scores.json"
    scores = eval_results.main([path, "--dataset", name, "--only-present-images", "--json", str(out)])
    assert scores["relationship_R@50"] == pytest.approx(100.0)
    written = json.loads(out.read_text())
    assert written["missing_images"] == 4 and written["only_present_images"] is True


# ------------------------------------------------------------------------------ argument ranges
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"topk_values": (0,)}, r"topk_values \(the K of R@K\) must be >= 1, found 0"),
        ({"topk_values": (-50,)}, r"topk_values \(the K of R@K\) must be >= 1, found -50"),
        ({"topk_values": ()}, r"topk_values must hold at least one K"),
        ({"topk_values": (50.5,)}, r"topk_values .* must be an integer, found 50.5"),
        ({"iou_threshold": 1.5}, r"iou_threshold must be in \[0.0, 1.0\], found 1.5"),
        ({"iou_threshold": float("nan")}, r"iou_threshold must be a finite number, found nan"),
        ({"iou_threshold": 0.0}, r"iou_threshold must be in \(0, 1\]"),
        ({"k_values": (1, -2)}, r"k_values .* must be >= 0, found -2"),
        ({"best_k": -1}, r"best_k must be >= 0, found -1"),
        ({"num_predicates": -3}, r"num_predicates must be >= 1, found -3"),
        ({"num_objects": 0}, r"num_objects must be >= 1, found 0"),
    ],
)
def test_evaluator_arguments_are_range_checked(kwargs, message):
    with pytest.raises(ValueError, match=r"VRDEvaluator: " + message):
        VRDEvaluator(_register_toy(), distributed=False, **kwargs)


def test_eval_results_num_predicates_checked_before_reading(tmp_path):
    missing = str(tmp_path / "not_there.mat")  # never opened: the flag is refused first
    with pytest.raises(ValueError, match=r"eval_results.py: --num-predicates must be >= 1, found -3"):
        eval_results.main([missing, "--gt-mat", missing, "--num-predicates", "-3"])


# ------------------------------------------------------------------------------ format / dataset tags
def test_results_json_of_another_dataset_or_format_is_refused(tmp_path):
    name = _register_toy()
    doc = {"format": "vrd_d2.relations.v1", "dataset": "vg150_test", "images": []}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"other.json: key 'dataset' declares 'vg150_test', but it is scored against"):
        eval_results.main([str(other), "--dataset", name])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(dict(doc, format="someone.else.v9", dataset=name)))
    with pytest.raises(ValueError, match=r"unknown.json: key 'format' is 'someone.else.v9'"):
        eval_results.main([str(unknown), "--dataset", name])


# ------------------------------------------------------------------------------ Lu .mat cells
def _cells(arrays):
    c = np.empty((1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        c[0, i] = a
    return c


def _lu_files(tmp_path):
    """A 2-image gt.mat / imagePath.mat pair in Lu's layout (<root>/evaluation, <root>/data)."""
    import scipy.io

    (tmp_path / "evaluation").mkdir()
    (tmp_path / "data").mkdir()
    names = ["first.jpg", "second.jpg"]
    labels = [np.array([[1, 2, 3], [4, 5, 6], [2, 1, 2], [3, 3, 3]], float), np.array([[1, 1, 2]], float)]
    boxes = [
        np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9], [2, 2, 30, 30]], float),
        np.array([[0, 0, 5, 5]], float),
    ]
    scipy.io.savemat(str(tmp_path / "data" / "imagePath.mat"), {"imagePath": _cells(names)})
    gt = str(tmp_path / "evaluation" / "gt.mat")
    scipy.io.savemat(
        gt, {"gt_tuple_label": _cells(labels), "gt_sub_bboxes": _cells(boxes), "gt_obj_bboxes": _cells(boxes)}
    )
    return gt, labels, boxes


def _results_mat(path, labels, boxes, transform=lambda a: a):
    import scipy.io

    scipy.io.savemat(
        path,
        {
            "rlp_labels_ours": _cells([transform(a) for a in labels]),
            "rlp_confs_ours": _cells([np.linspace(1, 0.5, len(a)).reshape(-1, 1) for a in labels]),
            "sub_bboxes_ours": _cells(boxes),
            "obj_bboxes_ours": _cells(boxes),
        },
    )


def test_lu_mat_perfect_results_score_100(tmp_path):
    gt, labels, boxes = _lu_files(tmp_path)
    res = str(tmp_path / "res.mat")
    _results_mat(res, labels, boxes)
    scores = eval_results.main([res, "--gt-mat", gt, "--num-objects", "10", "--num-predicates", "10"])
    assert scores["relationship_R@50"] == pytest.approx(100.0)


def test_lu_mat_transposed_labels_are_refused(tmp_path):
    gt, labels, boxes = _lu_files(tmp_path)
    res = str(tmp_path / "res.mat")
    _results_mat(res, labels, boxes, transform=lambda a: a.T)  # 3 x 4 instead of 4 x 3
    with pytest.raises(
        ValueError,
        match=r"res.mat: image 0 \(first.jpg\): rlp_labels_ours: shape \(3, 4\) does not hold rows of 3 numbers \(transposed",
    ):
        eval_results.main([res, "--gt-mat", gt, "--num-objects", "10", "--num-predicates", "10"])


@pytest.mark.parametrize(
    "cell, message",
    [
        (np.ones((1, 2)), r"shape \(1, 2\) does not hold rows of 3 numbers"),
        (np.ones((13, 2)), r"shape \(13, 2\) does not hold rows of 3 numbers$"),
        (np.array(["abc"]), r"expected numbers, found dtype <U3"),
    ],
)
def test_lu_mat_bad_cells_name_file_image_and_variable(tmp_path, cell, message):
    gt, labels, boxes = _lu_files(tmp_path)
    res = str(tmp_path / "res.mat")
    _results_mat(res, labels, boxes, transform=lambda a: cell if len(a) == 1 else a)
    with pytest.raises(ValueError, match=r"res.mat: image 1 \(second.jpg\): rlp_labels_ours: " + message):
        eval_results.main([res, "--gt-mat", gt, "--num-objects", "10", "--num-predicates", "10"])


def test_transposed_gt_mat_cell_is_refused(tmp_path):
    import scipy.io

    gt, labels, boxes = _lu_files(tmp_path)
    scipy.io.savemat(gt, {"gt_tuple_label": _cells([labels[0].T, labels[1]]), "gt_sub_bboxes": _cells(boxes),
                          "gt_obj_bboxes": _cells(boxes)})  # fmt: skip
    from vrd_d2.evaluation import load_lu_ground_truth

    with pytest.raises(ValueError, match=r"gt.mat: image 0 \(first.jpg\): gt_tuple_label: shape \(3, 4\)"):
        load_lu_ground_truth(gt, str(tmp_path / "data" / "imagePath.mat"))


# ------------------------------------------------------------------------------ sgdet without a detector
def test_sgdet_with_geometry_only_head_is_refused_before_any_image(tiny_cfg):
    from vrd_d2.engine import Trainer, check_stage_inputs

    cfg = tiny_cfg("Shapes/geometry_only.yaml", "MODEL.VRD.MODE", "sgdet")
    ran = []

    class Recording(VRDEvaluator):
        def process(self, inputs, outputs):
            ran.append(len(inputs))

    with pytest.raises(ValueError, match=r"MODEL.VRD.MODE 'sgdet' with MODEL.VRD.FEATURES 'geometry'"):
        Trainer.test(cfg, model=None, evaluators=[Recording(_register_toy(), distributed=False)])
    with pytest.raises(ValueError, match=r"MODEL.VRD.MODE 'sgdet' with MODEL.VRD.FEATURES 'geometry'"):
        check_stage_inputs(cfg, eval_only=True)
    assert ran == []
    # the gold-box modes, and a geometry head fine-tuned on proposals, still pass the check
    check_stage_inputs(tiny_cfg("Shapes/geometry_only.yaml", "MODEL.VRD.MODE", "predcls"), eval_only=True)
    check_stage_inputs(
        tiny_cfg("Shapes/geometry_only.yaml", "MODEL.VRD.MODE", "sgdet", "MODEL.VRD.TRAIN_ON_PROPOSALS", "True"),
        eval_only=True,
    )


# ------------------------------------------------------------------------------ JSON depth / overflow
DEEP = "[" * 100000 + "]" * 100000


def test_deeply_nested_results_json_is_a_clear_error(tmp_path):
    from vrd_d2.evaluation.results_json import load_results_json

    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(ValueError, match=r"deep.json: not a results document \(JSON nested too deeply"):
        load_results_json(str(path))


def test_huge_box_coordinate_is_a_clear_error(tmp_path):
    from vrd_d2.evaluation.results_json import load_results_json

    row = '{"subject_box": [0, 0, 1' + "0" * 400 + ', 5], "object_box": [0, 0, 5, 5], "subject": 0, '
    row += '"predicate": 0, "object": 0, "score": 0.5}'
    path = tmp_path / "huge.json"
    path.write_text('{"images": [{"image_id": 0, "file_name": "a.jpg", "relations": [' + row + "]}]}")
    with pytest.raises(ValueError, match=r"huge.json: image 0 \(image_id=0, a.jpg\), row 0: subject_box .* not finite"):
        load_results_json(str(path))


def test_given_boxes_deep_or_huge(tmp_path):
    from vrd_d2.utils.given_boxes import load_given_boxes

    deep = tmp_path / "deep_boxes.json"
    deep.write_text(DEEP)
    with pytest.raises(ValueError, match=r"--boxes .*deep_boxes.json: cannot read JSON: nested too deeply"):
        load_given_boxes(str(deep), ["a"])
    huge = tmp_path / "huge_boxes.json"
    huge.write_text('{"x.jpg": {"boxes": [[0, 0, 1' + "0" * 400 + ", 5]]}}")
    with pytest.raises(ValueError, match=r"boxes\[0\] must be 4 finite numbers"):
        load_given_boxes(str(huge), ["a"])


def test_deep_objects_json_does_not_break_registration(tmp_path):
    from detectron2.data import DatasetCatalog

    from vrd_d2.data.datasets.vrd import register_all_vrd

    (tmp_path / "objects.json").write_text(DEEP)
    (tmp_path / "predicates.json").write_text('["on"]')
    register_all_vrd(str(tmp_path), prefix="vrd_d2_test_deep")  # logged, not raised (import vrd_d2 works)
    with pytest.raises(ValueError, match=r"objects.json: json nested too deeply"):
        DatasetCatalog.get("vrd_d2_test_deep_test")


def test_results_of_a_detections_view_are_scored_against_its_split(tmp_path):
    """register_lu_detections sets images_of: its results may be scored against the split."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = _register_toy()
    view = "vrd_d2_test_eval_checks_det"
    if view not in DatasetCatalog.list():
        DatasetCatalog.register(view, lambda: DatasetCatalog.get(name))
        MetadataCatalog.get(view).set(images_of=name)
    path = str(tmp_path / "view.json")
    write_results_json(path, _perfect_entries(set(range(6))), view)
    assert eval_results.main([path, "--dataset", name])["relationship_R@50"] == pytest.approx(100.0)
