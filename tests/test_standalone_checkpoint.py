"""Checkpoints that stand alone: every checkpoint vrd_d2 training writes carries its class and
predicate names and its config as plain entries (``torch.load(weights_only=True)``); the demo and
VRDPredictor run from the config and the weights alone, with the same relations as with the dataset
registered; a registered dataset whose names differ from the checkpoint's is an error naming both."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_DIR as REPO  # noqa: E402
from conftest import SMALL_HEAD  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from vrd_d2.checkpoint_info import fill_dataset_class_names, resolve_class_names
from vrd_d2.engine import Trainer

# a head shrunk to a few channels: trains on CPU in seconds
SMALL = [
    *SMALL_HEAD,
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.STEPS",
    "()",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SEED",
    "1",
]


def _train(cfg) -> str:
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")


@pytest.fixture(scope="module")
def shapes_weights(tmp_path_factory):
    from conftest import tiny_config

    out = tmp_path_factory.mktemp("shapes_run")
    cfg = tiny_config("Shapes/geometry_only.yaml", *SMALL, "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))
    return cfg, _train(cfg)


def test_every_checkpoint_carries_names_and_config_readable_without_pickle(shapes_weights):
    cfg, weights = shapes_weights
    md = MetadataCatalog.get("shapes_train")
    ckpt = torch.load(weights, weights_only=True)
    assert ckpt["thing_classes"] == list(md.thing_classes)
    assert ckpt["predicate_classes"] == list(md.predicate_classes)
    saved = yaml.safe_load(ckpt["config"])
    assert saved["MODEL"]["VRD"]["FC_DIMS"] == [8]
    assert saved["MODEL"]["VRD"]["FEATURES"] == "geometry"
    assert saved["DATASETS"]["TRAIN"] == list(cfg.DATASETS.TRAIN)
    assert ckpt["iteration"] == 1  # the trainer's own entries are still there


def _renamed(weights, tmp_path, index=1):
    ckpt = torch.load(weights, weights_only=True)
    ckpt["thing_classes"] = list(ckpt["thing_classes"])
    ckpt["thing_classes"][index] = "zebra"
    path = tmp_path / "renamed.pth"
    torch.save(ckpt, path)
    return str(path), ckpt


def test_names_of_a_registered_dataset_must_agree_with_the_checkpoints(shapes_weights, tmp_path):
    from vrd_d2.demo import setup_demo_cfg
    from vrd_d2.predictor import VRDPredictor

    cfg, weights = shapes_weights
    config = os.path.join(REPO, "configs", "Shapes", "geometry_only.yaml")
    same = VRDPredictor(setup_demo_cfg(config, ["MODEL.DEVICE", "cpu"] + SMALL, weights))
    assert same.class_names["thing_classes"] == list(MetadataCatalog.get("shapes_test").thing_classes)

    renamed, ckpt = _renamed(weights, tmp_path)
    expected = MetadataCatalog.get("shapes_test").thing_classes[1]
    with pytest.raises(ValueError) as e:
        VRDPredictor(setup_demo_cfg(config, ["MODEL.DEVICE", "cpu"] + SMALL, renamed))
    msg = str(e.value)
    assert renamed in msg and "shapes_test" in msg
    assert f"thing_classes[1] is 'zebra' in the checkpoint and {expected!r} in the dataset" in msg

    # a dataset registered without names (its files absent) takes the checkpoint's
    DatasetCatalog.register("s30_nameless", lambda: [])
    opts = ["DATASETS.TEST", "('s30_nameless',)", "DATASETS.TRAIN", "()"]
    alone = VRDPredictor(setup_demo_cfg(config, ["MODEL.DEVICE", "cpu"] + SMALL + opts, renamed))
    assert alone.class_names["thing_classes"] == ckpt["thing_classes"]
    fill_dataset_class_names(["s30_nameless"], ckpt, renamed)
    assert MetadataCatalog.get("s30_nameless").thing_classes == ckpt["thing_classes"]
    with pytest.raises(ValueError, match="thing_classes\\[1\\] is 'person' in the checkpoint and 'zebra' in"):
        other = dict(ckpt, thing_classes=ckpt["thing_classes"][:1] + ["person"] + ckpt["thing_classes"][2:])
        fill_dataset_class_names(["s30_nameless"], other, "other.pth")


def test_lists_of_unequal_length_and_malformed_entries_are_errors(tmp_path):
    from types import SimpleNamespace

    DatasetCatalog.register("s30_three", lambda: [])
    MetadataCatalog.get("s30_three").set(thing_classes=["a", "b", "c"], predicate_classes=["on"])
    cfg = SimpleNamespace(DATASETS=SimpleNamespace(TEST=("s30_three",), TRAIN=()))
    longer = {"thing_classes": ["a", "b", "c", "d"], "predicate_classes": ["on"]}
    with pytest.raises(ValueError, match="the checkpoint has 4 names and the dataset 3"):
        resolve_class_names(cfg, longer, "w.pth")
    with pytest.raises(ValueError, match="w.pth: entry 'predicate_classes' must be a list of names"):
        resolve_class_names(cfg, {"thing_classes": ["a"], "predicate_classes": [1]}, "w.pth")
    with pytest.raises(ValueError, match="w.pth: holds thing_classes but not"):
        resolve_class_names(cfg, {"thing_classes": ["a"]}, "w.pth")
    # no names in the checkpoint: the dataset's; none anywhere: None
    assert resolve_class_names(cfg, {"iteration": 3}, "w.pth")["thing_classes"] == ["a", "b", "c"]
    none = SimpleNamespace(DATASETS=SimpleNamespace(TEST=(), TRAIN=()))
    assert resolve_class_names(none, {}, "w.pth") is None


# ------------------------------------------------------------------ real VRD, from weights alone
_PREDICT = """
import json, sys
import cv2
import vrd_d2
from vrd_d2.demo import setup_demo_cfg
from vrd_d2.predictor import VRDPredictor
config, weights, image, boxes_file = sys.argv[1:5]
entry = json.load(open(boxes_file))[image.split("/")[-1]]
p = VRDPredictor(setup_demo_cfg(config, ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()"] + sys.argv[5:], weights))
rel = p(cv2.imread(image), entry["boxes"], entry["labels"])["relations"]
fields = ("pair_indices", "subject_classes", "predicate_classes", "object_classes")
out = {k: rel.get(k).tolist() for k in fields}
print(json.dumps(dict(out, names=p.class_names, scores=rel.scores.tolist())))
"""


@pytest.mark.slow
def test_demo_and_predictor_run_from_config_and_weights_alone(shared_vrd, tmp_path):
    from conftest import tiny_config

    from vrd_d2.data.datasets.vrd import register_vrd_split

    register_vrd_split("s30_vrd_test", str(shared_vrd), "test")
    out = tmp_path / "run"
    cfg = tiny_config(
        "VRD/geometry_only.yaml",
        *SMALL,
        "DATASETS.TRAIN",
        "('s30_vrd_test',)",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(out),
    )
    weights = _train(cfg)
    objects = json.loads((shared_vrd / "objects.json").read_text())
    assert torch.load(weights, weights_only=True)["thing_classes"] == objects

    samples = sorted(os.listdir(shared_vrd / "sample_images"))[:2]
    records = {os.path.basename(r["file_name"]): r for r in DatasetCatalog.get("s30_vrd_test")}
    boxes = {}
    for name in samples:
        anns = records[name]["annotations"]
        boxes[name] = {
            "boxes": [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
            "labels": [int(a["category_id"]) for a in anns],
        }
    assert all(len(b["boxes"]) >= 2 for b in boxes.values())
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    images = [str(shared_vrd / "sample_images" / n) for n in samples]

    empty = tmp_path / "no_datasets"
    empty.mkdir()
    with_data = tmp_path / "datasets"
    with_data.mkdir()
    (with_data / "vrd").symlink_to(shared_vrd)
    config = os.path.join(REPO, "configs", "VRD", "geometry_only.yaml")
    small = SMALL[:16]  # the model's shape, not the schedule

    def run(args, datasets):
        env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), PYTHONPATH=REPO, OMP_NUM_THREADS="2")
        proc = subprocess.run([sys.executable, *args], env=env, cwd=str(tmp_path), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    graphs = {}
    for label, datasets in (("alone", empty), ("with_data", with_data)):
        demo_out = tmp_path / f"demo_{label}"
        run(
            [os.path.join(REPO, "tools", "demo.py"), "--config-file", config, "--weights", weights]
            + ["--input", *images, "--output", str(demo_out), "--boxes", str(boxes_file), "--graph-format", "none"]
            + ["--top-n", "5", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", *small],
            datasets,
        )
        graphs[label] = {n: json.loads((demo_out / f"{n}.json").read_text()) for n in samples}
    assert graphs["alone"] == graphs["with_data"]
    for graph in graphs["alone"].values():
        assert len(graph["relations"]) == 5
        assert {o["label"] for o in graph["objects"]} <= set(objects)

    alone = json.loads(
        run(["-c", _PREDICT, config, weights, images[0], str(boxes_file), *small], empty).splitlines()[-1]
    )
    assert alone["names"]["thing_classes"] == objects
    assert alone["names"]["predicate_classes"] == json.loads((shared_vrd / "predicates.json").read_text())

    # in this process, with the dataset registered with its files (names from the dataset agree)
    from vrd_d2.demo import setup_demo_cfg
    from vrd_d2.predictor import VRDPredictor

    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "('s30_vrd_test',)", *small]
    predictor = VRDPredictor(setup_demo_cfg(config, opts, weights))
    import cv2

    entry = boxes[samples[0]]
    rel = predictor(cv2.imread(images[0]), entry["boxes"], entry["labels"])["relations"]
    assert len(rel) > 0
    for key in ("pair_indices", "subject_classes", "predicate_classes", "object_classes"):
        assert alone[key] == rel.get(key).tolist(), key
    np.testing.assert_allclose(alone["scores"], rel.scores.tolist(), rtol=1e-6, atol=1e-7)


def test_eval_only_with_given_boxes_runs_from_the_checkpoints_names(shapes_weights, tmp_path):
    """train_net --eval-only (phrase_cls: given boxes) on a test set registered without names gets
    them from the checkpoint and the same results as with names; other names are an error."""
    from tools_loader import load_tool

    _, weights = shapes_weights
    shapes = MetadataCatalog.get("shapes_test")
    variants = {"nameless": {}, "named": {k: list(shapes.get(k)) for k in ("thing_classes", "predicate_classes")}}
    variants["renamed"] = dict(
        variants["named"], predicate_classes=["zebra"] + variants["named"]["predicate_classes"][1:]
    )
    for label, names in variants.items():
        DatasetCatalog.register(f"s30_eval_{label}", lambda: DatasetCatalog.get("shapes_test")[:6])
        MetadataCatalog.get(f"s30_eval_{label}").set(
            evaluator_type="vrd", evaluation_protocol="lu", train_split="shapes_train", **names
        )
    tool = load_tool("train_net")
    config = os.path.join(REPO, "configs", "Shapes", "geometry_only.yaml")

    def evaluate(label):
        opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / label), "DATASETS.TRAIN", "()"]
        opts += ["DATASETS.TEST", f"('s30_eval_{label}',)", "MODEL.VRD.MODE", "phrase_cls"]
        return tool.main(["--config-file", config, "--eval-only", *SMALL[:16], *opts])

    alone, named = evaluate("nameless"), evaluate("named")
    assert MetadataCatalog.get("s30_eval_nameless").thing_classes == list(shapes.thing_classes)
    assert list(alone) == ["phrase_cls", "phrase_cls_complete"]
    for task in alone:
        np.testing.assert_equal(dict(alone[task]), dict(named[task]))  # nan (no zero-shot) equals nan
        assert alone[task]["R@100_kfree"] > 0
    with pytest.raises(ValueError, match=r"predicate_classes\[0\] is .* in the checkpoint and 'zebra' in the dataset"):
        evaluate("renamed")
