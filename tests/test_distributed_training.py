"""2-process CPU (gloo) training through vrd_d2.engine.launch_cpu equals 1-process training.

The same function runs in 2 spawned gloo processes (SOLVER.IMS_PER_BATCH 2: 1 image per process)
and in 1 process (IMS_PER_BATCH 2): it trains the "triplet" stage for a few iterations with
vrd_d2.engine.Trainer, evaluates with the VRD evaluator (the EvalHook at the end of training, the
2-process run gathering predictions of both processes) and writes the initial and final weights,
the per-step images and losses and the evaluation results.

Why the two runs can be equal: detectron2's TrainingSampler gives rank r the elements
r, r + W, r + 2W, ... of one seeded shuffled stream (the seed drawn by rank 0 and shared), and each
process batches IMS_PER_BATCH / W of them, so step i of the 2-process run sees the same two images
as step i of the 1-process run. loss_cp is a per-process sum over annotated pairs divided by the
pair count averaged over the processes (relation_losses._mean_over_workers), so DDP's mean of the
gradients is the gradient of the mean over the whole batch even though the synthetic images carry
different numbers of annotated pairs (1, 2 or 3). Nothing else is random: no flips, one resize
size, no dropout, GroupNorm (per image) in the frozen backbone.
"""

import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY_TRIPLET_NET  # noqa: E402  (tests/ is on sys.path under pytest)

TRAIN, TEST = "dist_equal_train", "dist_equal_test"
THINGS = ["red", "green", "blue"]
PREDICATES = ["near", "above", "left of", "on"]
COLORS = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]  # BGR of red, green, blue
SIZE = 128
PAIRS_PER_IMAGE = (1, 2, 3)  # image i has PAIRS_PER_IMAGE[i % 3] annotated pairs
TINY = TINY_TRIPLET_NET + [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    str(len(THINGS)),
    "MODEL.VRD.NUM_PREDICATES",
    str(len(PREDICATES)),
    "INPUT.MIN_SIZE_TRAIN",
    f"({SIZE},)",
    "INPUT.MAX_SIZE_TRAIN",
    str(SIZE),
    "INPUT.MIN_SIZE_TEST",
    str(SIZE),
    "INPUT.MAX_SIZE_TEST",
    str(SIZE),
    "INPUT.RANDOM_FLIP",
    "none",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.BASE_LR",
    "0.05",
    "SOLVER.CHECKPOINT_PERIOD",
    "100000",
    "TEST.EVAL_PERIOD",
    "0",
    "DATASETS.TRAIN",
    f'("{TRAIN}",)',
    "DATASETS.TEST",
    f'("{TEST}",)',
    "SEED",
    "3",
]
ITERS = 3


# ------------------------------------------------------------------------------ data
def _image(rng, n_boxes):
    """A 128x128 image with n_boxes filled rectangles of random classes: (image, objects)."""
    img = np.full((SIZE, SIZE, 3), 128, np.uint8)
    objects = []
    for _ in range(n_boxes):
        x1, y1 = (int(v) for v in rng.randint(0, SIZE - 40, size=2))
        w, h = (int(v) for v in rng.randint(16, 40, size=2))
        c = int(rng.randint(len(THINGS)))
        img[y1 : y1 + h, x1 : x1 + w] = COLORS[c]
        objects.append({"bbox": [x1, y1, x1 + w, y1 + h], "category_id": c})
    return img, objects


def write_dataset(root, n_train=4, n_test=3, n_boxes=3):
    """vrd json files + PNGs under root: every image has n_boxes boxes, image i has
    PAIRS_PER_IMAGE[i % 3] annotated (ordered) pairs, one pair of some images with two predicates."""
    import cv2

    rng = np.random.RandomState(0)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for split, n in ((TRAIN, n_train), (TEST, n_test)):
        images = []
        for i in range(n):
            img, objects = _image(rng, n_boxes)
            name = f"{split}_{i}.png"
            assert cv2.imwrite(os.path.join(root, "img", name), img)
            pairs = [(s, o) for s in range(n_boxes) for o in range(n_boxes) if s != o]
            chosen = rng.choice(len(pairs), PAIRS_PER_IMAGE[i % len(PAIRS_PER_IMAGE)], replace=False)
            relations = [[pairs[j][0], pairs[j][1], int(rng.randint(len(PREDICATES)))] for j in chosen]
            if i % 2 == 0:  # a second predicate on the first pair
                s, o, p = relations[0]
                relations.append([s, o, (p + 1) % len(PREDICATES)])
            images.append(
                {
                    "file_name": name,
                    "image_id": 100 * (split == TEST) + i,
                    "height": SIZE,
                    "width": SIZE,
                    "objects": objects,
                    "relations": relations,
                }
            )
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump({"thing_classes": THINGS, "predicate_classes": PREDICATES, "images": images}, f)


def register(root):
    """Register both splits (idempotent; spawned processes call it again)."""
    from detectron2.data import DatasetCatalog

    from vrd_d2.data import register_vrd_json

    for name in (TRAIN, TEST):
        if name not in DatasetCatalog.list():
            register_vrd_json(name, os.path.join(root, f"{name}.json"), os.path.join(root, "img"), train_split=TRAIN)


def unregister():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in (TRAIN, TEST):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


# ------------------------------------------------------------------------------ the launched run
_SEEN = []  # image_ids of each training batch of this process


def train_and_evaluate(root, out_dir, ims_per_batch, max_iter=ITERS):
    """Runs in every process: train the triplet stage, evaluate; rank 0 writes its files."""
    from detectron2.config import get_cfg
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from vrd_d2 import add_vrd_config
    from vrd_d2.engine import Trainer

    class RecordingTrainer(Trainer):
        @classmethod
        def build_train_loader(cls, cfg):
            loader = super().build_train_loader(cfg)

            def batches():
                for batch in loader:
                    _SEEN.append([int(d["image_id"]) for d in batch])
                    yield batch

            return batches()

    register(root)
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(
        os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "Shapes", "Base-Shapes.yaml"
        )
    )
    cfg.merge_from_list(
        TINY + ["SOLVER.IMS_PER_BATCH", str(ims_per_batch), "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", out_dir]
    )
    cfg.freeze()
    rank = comm.get_rank()
    seed_all_rng(cfg.SEED + rank)  # as default_setup: per-rank seeds, DDP broadcasts rank 0's init
    del _SEEN[:]
    trainer = RecordingTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    os.makedirs(out_dir, exist_ok=True)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, "initial.pth"))
    trainer.train()  # TEST.EVAL_PERIOD 0: the EvalHook evaluates DATASETS.TEST once at the end
    with open(os.path.join(out_dir, f"seen_rank{rank}.json"), "w") as f:
        json.dump(_SEEN, f)
    if rank != 0:
        return
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, "final.pth"))
    # total_loss = loss_cp, averaged over the processes (SimpleTrainer.write_metrics)
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    trainable = sorted(k for k, p in model.named_parameters() if p.requires_grad)
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump(
            {
                "world_size": comm.get_world_size(),
                "losses": losses,
                "trainable": trainable,
                "results": trainer._last_eval_results,
            },
            f,
        )  # what the EvalHook got


def run(root, out_dir, num_procs, ims_per_batch, max_iter=ITERS):
    from vrd_d2.engine import launch_cpu

    launch_cpu(train_and_evaluate, num_procs, args=(str(root), str(out_dir), ims_per_batch, max_iter))
    with open(os.path.join(out_dir, "run.json")) as f:
        info = json.load(f)
    seen = []
    for r in range(num_procs):
        with open(os.path.join(out_dir, f"seen_rank{r}.json")) as f:
            seen.append(json.load(f))
    return dict(
        info,
        seen=seen,
        initial=torch.load(os.path.join(out_dir, "initial.pth")),
        final=torch.load(os.path.join(out_dir, "final.pth")),
    )


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _flat_results(results):
    return {f"{task}/{m}": float(v) for task, metrics in results.items() for m, v in metrics.items()}


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    write_dataset(str(root))
    yield root
    unregister()  # the 1-process runs register in this process


@pytest.mark.slow
def test_two_process_training_equals_one_process(data_root, tmp_path):
    two = run(data_root, tmp_path / "two", num_procs=2, ims_per_batch=2)
    one = run(data_root, tmp_path / "one", num_procs=1, ims_per_batch=2)
    assert two["world_size"] == 2 and one["world_size"] == 1

    # the data schedule: step i of the 2-process run = rank 0's image + rank 1's image = the
    # 1-process batch i
    assert [len(r) for r in two["seen"]] == [ITERS, ITERS] and len(one["seen"][0]) == ITERS
    assert all(len(b) == 1 for r in two["seen"] for b in r) and all(len(b) == 2 for b in one["seen"][0])
    steps2 = [sorted(a + b) for a, b in zip(*two["seen"])]
    steps1 = [sorted(b) for b in one["seen"][0]]
    assert steps2 == steps1
    assert any(len(set(b)) == 2 for b in steps1)  # a real pair of images (4 images in the set)

    # the same initialization (rank 0 seeds SEED + 0 in both runs)
    assert set(one["initial"]) == set(two["initial"])
    for k in one["initial"]:
        assert torch.equal(one["initial"][k], two["initial"][k]), k

    # the same training: losses per step and every weight at the end
    assert len(one["losses"]) == len(two["losses"]) == ITERS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert set(one["final"]) == set(two["final"])
    for k in one["final"]:
        torch.testing.assert_close(two["final"][k], one["final"][k], rtol=1e-4, atol=1e-5, msg=k)

    # the test can fail: the triplet branches moved (well beyond the tolerance), the rest did not
    trainable = set(one["trainable"])
    assert trainable == set(two["trainable"]) and trainable
    # the branches and the relation stages' box head (the shapes configs' MODEL.VRD.FINETUNE_BOX_HEAD)
    copy = "roi_heads.relation_box_head."
    assert all(k.startswith("roi_heads.") and ("branch" in k or k.startswith(copy)) for k in trainable), trainable
    moved = {k: float((one["final"][k] - one["initial"][k]).abs().max()) for k in trainable}
    assert max(moved.values()) > 1e-2, moved
    for prefix in (
        "roi_heads.relation_predictor.spatial_branch.",
        "roi_heads.relation_predictor.subject_branch.",
        "roi_heads.relation_predictor.predicate_branch.",
        "roi_heads.relation_predictor.object_branch.",
        copy,
    ):
        assert any(v > 1e-4 for k, v in moved.items() if k.startswith(prefix)), prefix
    for run_ in (one, two):
        for k, v in run_["final"].items():
            if k not in trainable:
                assert torch.equal(v, run_["initial"][k]), k

    # the same evaluation (predictions gathered from both processes in the 2-process run)
    r1, r2 = _flat_results(one["results"]), _flat_results(two["results"])
    assert r1 and set(r1) == set(r2)
    assert any(k.startswith("phrase_cls/R@") for k in r1)
    assert any(k.startswith("phrase_cls/zsR@") for k in r1)  # the test split has zero-shot triplets
    for k in r1:
        assert r2[k] == pytest.approx(r1[k], abs=1e-6), k

    # sensitivity: another schedule (1 image per step, 1 process) ends elsewhere, far beyond the
    # tolerance used above
    other = run(data_root, tmp_path / "other", num_procs=1, ims_per_batch=1)
    assert [len(b) for b in other["seen"][0]] == [1] * ITERS
    for k in other["initial"]:
        assert torch.equal(other["initial"][k], one["initial"][k]), k
    assert _max_diff({k: other["final"][k] for k in trainable}, {k: two["final"][k] for k in trainable}) > 1e-3
