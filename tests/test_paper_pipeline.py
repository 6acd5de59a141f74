"""Every config under configs/VRD, configs/VG150 and configs/VG200 (every stage, evaluation mode and
Table 4 run, a stage config with overrides) runs 2 iterations / an evaluation on the 60 real VRD
sample images, written as each dataset's files, at the paper's code path with only input size and
widths shrunk; each stage starts from the real checkpoint its config names. Skipped when
../shared/data/vrd is absent."""

import glob
import math
import os

import pytest
import torch
from conftest import REPO
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from paper_data import TINY, register_paper_datasets, restore_builtin_datasets, write_paper_datasets

from vrd_d2.config import add_vrd_config
from vrd_d2.engine import Trainer, check_stage_inputs
from vrd_d2.engine.pipeline import DATASETS, Step, evaluation_file, plan_steps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory, shared_vrd):
    root = tmp_path_factory.mktemp("paper")
    records = write_paper_datasets(shared_vrd, root / "datasets")
    pre = root / "pretrained.pth"
    register_paper_datasets(root / "datasets")
    yield root, records, pre
    restore_builtin_datasets()


def _cfg(config, opts):
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(list(opts))
    return cfg


def _imagenet_like(cfg, path):
    """The converted ImageNet VGG16 file (tools/convert_torchvision_vgg.py: backbone + fc6/fc7),
    at the shrunk widths."""
    if not path.exists():
        model = Trainer.build_model(cfg)
        torch.save(
            {
                "model": {
                    k: v for k, v in model.state_dict().items() if k.startswith(("backbone.", "roi_heads.box_head."))
                }
            },
            path,
        )


def _two_iterations(cfg, num_images):
    """SOLVER.EPOCHS such that ceil(EPOCHS * images / IMS_PER_BATCH) = 2, one lr step at 1."""
    e = 3.0 / num_images
    return ["SOLVER.EPOCHS", repr(e), "SOLVER.EPOCH_STEPS", f"({e / 2!r},)"] if cfg.SOLVER.EPOCHS > 0 else []


def _run(step, extra, num_images):
    cfg = _cfg(step.config, list(step.opts) + TINY + extra)
    cfg.merge_from_list(_two_iterations(cfg, num_images[cfg.MODEL.VRD.TRAIN_STAGE]))
    cfg.freeze()
    if step.eval_only:  # tools/train_net.py --eval-only
        check_stage_inputs(cfg, eval_only=True)
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        res = Trainer.test(cfg, model)
        assert res and os.path.isfile(evaluation_file(step, cfg.DATASETS.TEST[0]))
        if cfg.MODEL.VRD.TEST.PROTOCOL == "both":  # VG: Lu's and SGB's figures, each under its name
            assert list(res) == ["lu", "sgb"] and set(res["sgb"]) <= set(res["lu"]), res
            assert all(any(m.endswith("_k1") for m in v) for v in res["lu"].values()), res
            assert all("R@20" in v and "ngR@100" in v for v in res["sgb"].values()), res
        return cfg
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.max_iter == trainer.iter == 2  # 2 iterations, from the epochs
    assert tuple(trainer.cfg.SOLVER.STEPS) == (1,)
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    return cfg


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_config_runs_on_real_images(paper_root, dataset):
    root, records, pre = paper_root
    d = DATASETS[dataset]
    out = str(root / "output")
    with_rel = sum(1 for r in records if len(r["relations"]) and len(r["annotations"]) >= 2)
    with_ann = sum(1 for r in records if len(r["annotations"]))
    num_images = {"detector": with_ann, "triplet": with_rel, "selection": with_rel}
    steps = plan_steps(dataset, proposals=True, ablation=dataset != "vg200", repo=str(REPO), output_root=out)
    # the plan covers every config file of the dataset but the geometry-only head (tools/vrd_real.py)
    files = {
        os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", d, "**", "*.yaml"), recursive=True)
    }
    planned = {s.config for s in steps}
    assert files - planned <= {f"configs/{d}/Base-{d}.yaml", f"configs/{d}/geometry_only.yaml"}
    # proposals chain: evaluation after stage 4 uses the selection head retrained on stage 4's output
    produced = {}
    cfgs = {}
    for step in steps:
        extra = []
        if step.name == "stage1_detector":
            _imagenet_like(_cfg(step.config, TINY), pre)
            extra = ["MODEL.WEIGHTS", str(pre)]
        if not step.eval_only and step.weights.startswith(out):
            assert step.weights in produced, f"{step.name} reads {step.weights}, which no earlier stage writes"
        cfgs[step.name] = _run(step, extra, num_images)
        if not step.eval_only:
            produced[os.path.join(step.output_dir, "model_final.pth")] = step.name
    for config in sorted(files - planned - {f"configs/{d}/Base-{d}.yaml"}):  # the geometry-only head
        name = os.path.basename(config)[:-5]
        _run(
            Step(name, config, False, os.path.join(out, d, name), "", ("OUTPUT_DIR", os.path.join(out, d, name))),
            [],
            num_images,
        )
    for name in ("stage3_selection", "stage4_selection"):
        assert cfgs[name].MODEL.VRD.TRAIN_STAGE == "selection"
    s3, s4, s4sel = (
        _state(os.path.join(out, d, n, "model_final.pth"))
        for n in ("stage3_selection", "stage4_proposals", "stage4_selection")
    )
    assert not _same(s3, s4, "roi_heads.relation_predictor.spatial_branch.")  # stage 4 retrains the spatial branch ...
    assert _same(s4, s4sel, "roi_heads.relation_predictor.spatial_branch.")  # ... stage 4's selection keeps it ...
    assert not _same(s4, s4sel, "roi_heads.relation_predictor.selection_head.")  # ... and retrains X_sel on it
    for mode in ("sgdet", "phrase_cls", "predcls"):
        assert cfgs[f"eval_{mode}"].MODEL.VRD.MODE == mode
        assert cfgs[f"eval_{mode}"].MODEL.WEIGHTS == os.path.join(out, d, "stage4_selection", "model_final.pth")
    if dataset == "vg200":
        return
    # Table 4: every rank its own chain, evaluated in phrase classification at k = 1 and free k
    for r in range(1, 6):  # ranks 1-4: stage 2 only (their rows use no X_sel); rank 5: stage 2 -> 3
        s2, ev = cfgs[f"ablations/rank{r}"], cfgs[f"ablations/rank{r}_eval"]
        last = cfgs.get(f"ablations/rank{r}_selection", s2)
        assert (f"ablations/rank{r}_selection" in cfgs) == (r == 5)
        assert s2.MODEL.VRD.RANK == last.MODEL.VRD.RANK == ev.MODEL.VRD.RANK == r
        assert last.MODEL.WEIGHTS == os.path.join(s2.OUTPUT_DIR, "model_final.pth") or last is s2
        assert ev.MODEL.WEIGHTS == os.path.join(last.OUTPUT_DIR, "model_final.pth")
        assert (ev.MODEL.VRD.USE_PRIOR, ev.MODEL.VRD.USE_SELECTION) == (False, False)
    for name, flags in (("no_prior", (False, True)), ("full", (True, True))):
        c = cfgs[f"ablations/{name}"]
        assert (c.MODEL.VRD.USE_PRIOR, c.MODEL.VRD.USE_SELECTION) == flags and c.MODEL.VRD.RANK == 5
    for name in [f"rank{r}_eval" for r in range(1, 6)] + ["no_prior", "full"]:
        c = cfgs[f"ablations/{name}"]
        assert c.MODEL.VRD.MODE == "phrase_cls" and sorted(c.MODEL.VRD.TEST.K_PER_PAIR) == [0, 1]


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_paper_schedules_are_in_epochs(dataset):
    d = DATASETS[dataset]
    for s in plan_steps(dataset, proposals=True, repo=str(REPO)):
        cfg = _cfg(s.config, ())
        if not s.eval_only:
            assert cfg.SOLVER.EPOCHS > 0, s.config
        assert cfg.INPUT.RANDOM_FLIP == "none", s.config  # the paper mentions no flipping
    assert _cfg(f"configs/{d}/stage2_triplet.yaml", ()).SOLVER.EPOCHS == 7  # the paper's triplet net
    assert math.isclose(_cfg(f"configs/{d}/stage2_triplet.yaml", ()).SOLVER.BASE_LR, 1e-4)
