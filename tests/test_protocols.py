"""The protocol registry (vrd_d2.evaluation.protocols): a protocol registered here is usable by name
through VRDEvaluator and tools/eval_results.py; "auto" follows the dataset's metadata; "both" holds
each protocol's results under its name; DefaultTrainer.test can print them."""

import json
from collections import OrderedDict

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from vrd_d2.evaluation import VRD_PROTOCOL_REGISTRY, ProtocolResult, RelationProtocol, VRDEvaluator, tasks_for_mode
from vrd_d2.evaluation.protocols import DEFAULT_PROTOCOL, METADATA_KEY, protocol_choices, resolve_protocol

A = [0.0, 0.0, 9.0, 9.0]
B = [20.0, 20.0, 29.0, 29.0]
C = [40.0, 40.0, 49.0, 49.0]


class RowCountProtocol(RelationProtocol):
    """A toy protocol: per task, the ground-truth rows and the predicted rows of the split."""

    name = "row_count"
    title = "Row counts"

    def evaluate(self, predictions, ground_truths, complete_ground_truths=None, num_predicates=None):
        gt_rows = float(sum(len(g["labels"]) for g in ground_truths))
        pred_rows = float(sum(len(p["scores"]) for p in predictions))
        results = OrderedDict(
            (task, OrderedDict(gt_rows=gt_rows, pred_rows=pred_rows)) for task, _ in tasks_for_mode(self.mode)
        )
        return ProtocolResult(results, notes="(toy)", record={"row_count_images": len(predictions)})

    def table(self, results):
        return "\n".join(
            f"{t}: {m['pred_rows']:.0f} predicted, {m['gt_rows']:.0f} annotated" for t, m in results.items()
        )


if "RowCountProtocol" not in VRD_PROTOCOL_REGISTRY:
    VRD_PROTOCOL_REGISTRY.register(RowCountProtocol)


def _dataset(name="vrd_d2_test_protocols", **metadata):
    """Two images: 3 relations and 1 relation; registered once under ``name``."""
    if name not in DatasetCatalog.list():

        def load():
            anns = [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c} for b, c in zip([A, B, C], [0, 1, 2])]
            rels = [np.array([[0, 1, 0], [1, 2, 1], [0, 2, 0]]), np.array([[2, 0, 1]])]
            return [
                {
                    "file_name": f"im{i}.jpg",
                    "image_id": i,
                    "height": 60,
                    "width": 60,
                    "annotations": anns,
                    "relations": r,
                }
                for i, r in enumerate(rels)
            ]

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"], predicate_classes=["p", "q"], **metadata)
    return name


def _entries():
    """Predictions (labels: subject, predicate, object): image 0 finds its first relation (and has
    one wrong row), image 1 has one wrong row."""

    def record(labels, subs, objs):
        n = len(labels)
        return {
            "labels": np.array(labels, np.int64),
            "sub_boxes": np.array(subs, np.float64),
            "obj_boxes": np.array(objs, np.float64),
            "scores": np.linspace(0.9, 0.5, n),
            "pair_rank": np.zeros(n, np.int64),
        }

    return [
        {"image_id": 0, "file_name": "im0.jpg", "record": record([[0, 0, 1], [1, 0, 2]], [A, B], [B, C])},
        {"image_id": 1, "file_name": "im1.jpg", "record": record([[2, 0, 0]], [C], [A])},
    ]


def test_a_protocol_registered_here_is_usable_by_name(tmp_path):
    name = _dataset()
    assert "row_count" in protocol_choices()
    ev = VRDEvaluator(name, distributed=False, protocol="row_count", output_dir=str(tmp_path))
    assert ev.protocol == "row_count" and list(ev.protocols) == ["row_count"]
    res = ev.evaluate_predictions(_entries())
    # hand count: 3 + 1 annotated rows, 2 + 1 predicted rows; sgdet reports two tasks
    assert res == {t: {"gt_rows": 4.0, "pred_rows": 3.0} for t in ("relationship", "phrase")}
    saved = json.load(open(tmp_path / "vrd_evaluation.json"))
    assert saved["protocol"] == "row_count" and saved["row_count_images"] == 2
    assert saved["results"] == json.loads(json.dumps(res))
    assert ev.format_results(res).splitlines()[0] == "relationship: 3 predicted, 4 annotated"
    # in predcls the task list follows the mode, as for the builtin protocols
    assert list(
        VRDEvaluator(name, distributed=False, protocol="row_count", mode="predcls").evaluate_predictions(_entries())
    ) == ["predcls"]


def test_a_registered_protocol_through_the_tool(tmp_path):
    from tools_loader import load_tool

    name = _dataset()
    images = [
        {"image_id": 0, "file_name": "im0.jpg", "relations": []},
        {
            "image_id": 1,
            "file_name": "im1.jpg",
            "relations": [
                {
                    "subject_box": C,
                    "object_box": A,
                    "subject": 2,
                    "object": 0,
                    "predicate": 1,
                    "score": 0.5,
                    "pair_rank": 0,
                }
            ],
        },
    ]
    res, out = tmp_path / "res.json", str(tmp_path / "scores.json")
    res.write_text(json.dumps({"images": images}))
    scores = load_tool("eval_results").main([str(res), "--dataset", name, "--protocol", "row_count", "--json", out])
    # the base class's flat scores: <task>_<metric>; 0 + 1 predicted rows, 4 annotated
    assert scores == {
        "relationship_gt_rows": 4.0,
        "relationship_pred_rows": 1.0,
        "phrase_gt_rows": 4.0,
        "phrase_pred_rows": 1.0,
    }
    assert json.load(open(out))["protocol"] == "row_count"


def test_auto_follows_the_metadata_set_at_registration(tmp_path):
    from vrd_d2.data import register_vrd_json
    from vrd_d2.data.datasets import register_all_vrd, register_vg150, register_vg200
    from vrd_d2_studies.shapes_demo.data import register_shapes

    # prefixes unlike the builtin names: the protocol comes from the format, not the name
    register_all_vrd(str(tmp_path / "vrd"), prefix="proto_a")
    register_vg150(str(tmp_path / "vg"), prefix="proto_b")
    register_vg200(str(tmp_path / "vg200"), prefix="proto_c")
    register_shapes(str(tmp_path / "shapes"), prefix="proto_d")
    classes = dict(thing_classes=["a"], predicate_classes=["p"])
    register_vrd_json("proto_e", str(tmp_path / "e.json"), str(tmp_path), **classes)
    register_vrd_json("proto_f", str(tmp_path / "f.json"), str(tmp_path), evaluation_protocol="sgb", **classes)
    expected = {
        "proto_a_test": "lu",
        "proto_b_test": "sgb",
        "proto_c_test": "sgb",
        "proto_d_test": "lu",
        "proto_e": "lu",
        "proto_f": "sgb",
    }
    for dataset, protocol in expected.items():
        assert MetadataCatalog.get(dataset).get(METADATA_KEY) == protocol, dataset
        assert VRDEvaluator(dataset, distributed=False).protocol == protocol, dataset
        # an explicit protocol wins over the dataset's default
        assert VRDEvaluator(dataset, distributed=False, protocol="both").protocol == "both"
    # the builtin registrations give what the dataset-name rule gave before
    import vrd_d2  # noqa: F401

    for dataset, protocol in (("vrd_test", "lu"), ("vg150_test", "sgb"), ("vg200_test", "sgb"), ("shapes_test", "lu")):
        assert MetadataCatalog.get(dataset).get(METADATA_KEY) == protocol, dataset


def test_auto_without_the_metadata_field_and_bad_values():
    name = _dataset()
    assert MetadataCatalog.get(name).get(METADATA_KEY, None) is None
    # documented fallback: Lu et al.'s protocol (the paper's), whatever the dataset's name
    assert DEFAULT_PROTOCOL == "lu" and VRDEvaluator(name, distributed=False).protocol == "lu"
    vg_named = _dataset("vg150_vrd_d2_test_protocols")
    assert resolve_protocol("auto", MetadataCatalog.get(vg_named)) == "lu"
    bad = _dataset("vrd_d2_test_protocols_bad", evaluation_protocol="motifs")
    with pytest.raises(ValueError, match=r"vrd_d2_test_protocols_bad.*evaluation_protocol='motifs'"):
        VRDEvaluator(bad, distributed=False)
    auto = _dataset("vrd_d2_test_protocols_auto", evaluation_protocol="auto")
    with pytest.raises(ValueError, match="is not a protocol"):
        resolve_protocol("auto", MetadataCatalog.get(auto))
    with pytest.raises(ValueError, match="protocol must be one of"):
        VRDEvaluator(name, distributed=False, protocol="motifs")


def test_both_holds_each_protocol_under_its_name(tmp_path):
    name = _dataset()
    single = {
        p: VRDEvaluator(name, distributed=False, protocol=p).evaluate_predictions(_entries()) for p in ("lu", "sgb")
    }
    both = VRDEvaluator(name, distributed=False, protocol="both").evaluate_predictions(_entries())
    assert list(both) == ["lu", "sgb"] and both["lu"] == single["lu"] and both["sgb"] == single["sgb"]
    # hand counts: Lu 1 hit over 4 rows of the split; SGB per image (1/3 + 0/1) / 2
    assert both["lu"]["relationship"]["R@50_k1"] == pytest.approx(25.0)
    assert both["sgb"]["relationship"]["R@20"] == pytest.approx(100 / 6)


def test_trainer_prints_the_results_of_several_protocols(monkeypatch):
    """DefaultTrainer.test prints each evaluator's results with detectron2's print_csv_format,
    which reads task -> metric -> value: vrd_d2.engine.trainer gives it one that also reads "both"."""
    import detectron2.engine.defaults as d2_defaults
    from detectron2.evaluation.testing import print_csv_format as d2_print

    import vrd_d2.engine  # noqa: F401
    import vrd_d2.evaluation.vrd_evaluation as vrd_evaluation

    both = {"lu": {"relationship": {"R@50_k1": 25.0}}, "sgb": {"relationship": {"R@20": 16.7}, "phrase": {"R@20": 1.0}}}
    with pytest.raises((TypeError, ValueError)):
        d2_print(both)  # why the replacement exists
    assert d2_defaults.print_csv_format is vrd_evaluation.print_csv_format
    printed = []
    monkeypatch.setattr(vrd_evaluation, "_d2_print_csv_format", printed.append)
    d2_defaults.print_csv_format(both)
    single = {"relationship": {"R@50_k1": 25.0}}
    d2_defaults.print_csv_format(single)
    assert printed == [
        {"lu/relationship": {"R@50_k1": 25.0}, "sgb/relationship": {"R@20": 16.7}, "sgb/phrase": {"R@20": 1.0}},
        single,
    ]


def test_sgb_zero_shot_list_reaches_the_sgb_protocol(tmp_path):
    import torch

    name = _dataset()
    # SGB's file: 1-based (subject, object, predicate); the triplet image 0's prediction finds, (0, 0, 1)
    path = tmp_path / "zeroshot_triplet.pytorch"
    torch.save(torch.tensor([[1, 2, 1]], dtype=torch.int64), path)
    res = VRDEvaluator(name, distributed=False, protocol="both", sgb_zeroshot_triplets=str(path)).evaluate_predictions(
        _entries()
    )
    # only image 0 has a zero-shot row, and it is hit: 100; Lu's results take no part in the list
    assert res["sgb"]["relationship"]["zR@20"] == pytest.approx(100.0)
    assert (
        "zR@20"
        not in VRDEvaluator(name, distributed=False, protocol="sgb").evaluate_predictions(_entries())["relationship"]
    )
