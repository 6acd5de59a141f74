"""The configs say each thing once without changing what any run does: every config file's
effective config (get_cfg + add_vrd_config + merge_from_file) equals its own before the
reorganisation (tests/data/config_snapshot.json, made from commit 2fd5090's files); every removed
file has a replacement (a kept config + overrides, docs/CONFIG_CHANGES.md) whose effective config
equals the removed file's, but the stage-3 files of ranks 1-4, no longer run (their Table 4 rows use
no X_sel), whose rows now read their rank's stage 2; no ``_BASE_`` chain is more than 4 links deep."""

import glob
import os

import pytest
import yaml
from config_snapshot import effective_config, load_snapshot, replacement_command, replacement_rows
from conftest import CONFIGS, REPO

from vrd_d2.engine.pipeline import ABLATION_DATASETS, DATASETS
from vrd_d2.engine.table4 import ablation_runs

MAX_DEPTH = 4
FILES = sorted(os.path.relpath(p, CONFIGS) for p in glob.glob(str(CONFIGS / "**" / "*.yaml"), recursive=True))
SNAPSHOT = load_snapshot()
KEPT = [f for f in FILES if f in SNAPSHOT]
REMOVED = sorted(set(SNAPSHOT) - set(FILES))
ADDED = ["Base-Stage2-Triplet.yaml"]  # the paper's stage 2, shared by VRD, VG150 and VG200
# the stage 3 of ranks 1-4: their Table 4 rows score psi_c alone, so their chains stop after stage 2
NO_LONGER_RUN = sorted(f"{d}/ablations/rank{r}_selection.yaml" for d in ("VRD", "VG150") for r in range(1, 5))
REPLACED = [f for f in REMOVED if f not in NO_LONGER_RUN]
NO_LONGER_RUN_NOTE = "no longer run: its row uses no X_sel"


def expected_change(name: str):
    """``{key: (before, now)}`` that a replacement changes on purpose: a rank-r row (r < 5) reads
    its rank's stage 2, its stage 3 being no longer run."""
    dataset_dir, file = name.split("/")[0], name.split("/")[-1]
    rank = file[len("rank") : -len("_eval.yaml")] if file.startswith("rank") and file.endswith("_eval.yaml") else ""
    if rank and int(rank) != 5:
        path = f"output/{dataset_dir}/ablations/rank{rank}_stage"
        return {"MODEL.WEIGHTS": (f"{path}3/model_final.pth", f"{path}2/model_final.pth")}
    return {}


def base_depth(path: str) -> int:
    """The number of ``_BASE_`` links from ``path`` to a config without one (a loop fails)."""
    seen = []
    while True:
        with open(path) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if base is None:
            return len(seen)
        seen.append(path)
        path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        assert path not in seen, f"_BASE_ loop: {seen}"


def test_base_depth_counts_links(tmp_path):
    (tmp_path / "a.yaml").write_text("SEED: 1\n")
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    (tmp_path / "c.yaml").write_text('_BASE_: "b.yaml"\n')
    assert [base_depth(str(tmp_path / f"{n}.yaml")) for n in "abc"] == [0, 1, 2]


@pytest.mark.parametrize("name", FILES)
def test_base_chains_are_at_most_4_deep(name):
    assert base_depth(str(CONFIGS / name)) <= MAX_DEPTH, name


def test_files_are_the_kept_and_the_added_ones():
    assert sorted(set(FILES) - set(SNAPSHOT)) == ADDED
    # only the per-rank Table 4 files went (their runs are now stage configs + overrides)
    assert REMOVED and all(f.split("/")[1] == "ablations" for f in REMOVED)
    assert len(KEPT) + len(REMOVED) == len(SNAPSHOT) == 73


@pytest.mark.parametrize("name", KEPT)
def test_kept_config_runs_as_before(name):
    now = effective_config(str(CONFIGS / name))
    before = SNAPSHOT[name]
    assert {k: now.get(k) for k in before if now.get(k) != before[k]} == {}


def _replacement(name):
    dataset_dir, folder, file = name.split("/")
    runs = {r.name: r for r in ablation_runs(dataset_dir)}
    assert folder == "ablations" and file[: -len(".yaml")] in runs, f"{name} has no replacement"
    return dataset_dir, runs[file[: -len(".yaml")]]


@pytest.mark.parametrize("name", REPLACED)
def test_removed_config_has_a_replacement_that_runs_the_same(name):
    dataset_dir, run = _replacement(name)
    now = effective_config(str(CONFIGS / dataset_dir / run.config), run.opts)
    before = SNAPSHOT[name]
    assert {k: (before[k], now.get(k)) for k in before if now.get(k) != before[k]} == expected_change(name)


def test_expected_change_is_only_the_rows_of_ranks_1_to_4():
    changed = [n for n in REPLACED if expected_change(n)]
    assert changed == sorted(f"{d}/ablations/rank{r}_eval.yaml" for d in ("VG150", "VRD") for r in range(1, 5))


def test_every_removed_file_is_an_ablation_run_and_back():
    runs = {f"{DATASETS[d]}/ablations/{r.name}.yaml" for d in ABLATION_DATASETS for r in ablation_runs(DATASETS[d])}
    assert runs == set(REPLACED)
    assert len(NO_LONGER_RUN) == 8 and set(NO_LONGER_RUN) <= set(REMOVED) and not runs & set(NO_LONGER_RUN)


def test_config_changes_doc_lists_every_removed_file_with_its_replacement():
    doc = (REPO / "docs" / "CONFIG_CHANGES.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `configs/")]
    assert rows == replacement_rows()
    assert sorted(r.split("`")[1] for r in rows) == sorted(f"configs/{n}" for n in REPLACED)
    gone = [line for line in doc.splitlines() if line.startswith("- `configs/") and NO_LONGER_RUN_NOTE in line]
    assert sorted(line.split("`")[1] for line in gone) == sorted(f"configs/{n}" for n in NO_LONGER_RUN)
    dataset_dir, run = _replacement("VRD/ablations/rank5_selection.yaml")  # one row, written out by hand
    assert replacement_command(dataset_dir, run) == (
        "tools/train_net.py --config-file configs/VRD/stage3_selection.yaml MODEL.VRD.RANK 5 "
        "MODEL.WEIGHTS output/VRD/stage2_triplet/model_final.pth OUTPUT_DIR output/VRD/stage3_selection"
    )
    dataset_dir, run = _replacement("VRD/ablations/rank3_eval.yaml")  # reads rank 3's stage 2
    assert run.opts[run.opts.index("MODEL.WEIGHTS") + 1] == "output/VRD/ablations/rank3_stage2/model_final.pth"


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


@pytest.mark.parametrize("dataset_dir", ["VRD", "VG150", "VG200"])
def test_dataset_files_agree_on_the_dataset_and_share_stage_2(dataset_dir):
    """Every config of a dataset names its dataset and class counts as Base-<DATASET>.yaml does,
    and its stage 2 and 3 take the paper's stage-2 settings from Base-Stage2-Triplet.yaml without
    restating them (stage 3 sets only its own stage, learning rate and schedule)."""
    ds = effective_config(str(CONFIGS / dataset_dir / f"Base-{dataset_dir}.yaml"))
    for name in (f for f in FILES if f.startswith(dataset_dir + "/")):
        cfg = effective_config(str(CONFIGS / name))
        for k in ("MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.VRD.NUM_PREDICATES", "DATASETS.TRAIN", "DATASETS.TEST"):
            assert cfg[k] == ds[k], (name, k)
    with open(CONFIGS / "Base-Stage2-Triplet.yaml") as f:
        shared = _keys(yaml.safe_load(f)) - {"_BASE_"}
    assert {"MODEL.VGG.FREEZE_CONVS", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "SOLVER.EPOCHS"} <= shared
    for stage, own in (("stage2_triplet", set()), ("stage3_selection", {"MODEL.VRD.TRAIN_STAGE", "SOLVER.BASE_LR"})):
        with open(CONFIGS / dataset_dir / f"{stage}.yaml") as f:
            text = yaml.safe_load(f)
        assert text["_BASE_"] == "../Base-Stage2-Triplet.yaml"
        assert _keys(text) & shared <= own | {"SOLVER.EPOCHS"}, stage


@pytest.mark.parametrize("dataset", ABLATION_DATASETS)
def test_pipeline_steps_run_the_configs_they_ran_before(dataset):
    """tools/reproduce.py --ablation: every step's config (file + overrides) equals the one of the
    file it ran before (a removed ablation file for the Table 4 steps)."""
    from vrd_d2.engine.pipeline import BOTH_PROTOCOL_DATASETS, plan_steps

    d = DATASETS[dataset]
    steps = plan_steps(dataset, ablation=True, repo=str(REPO))
    assert len(steps) == 8 + (2 * 4 + 3) + 3  # the main chain with stage 4 and 4b; ranks 1-4 without stage 3
    for s in steps:
        before = dict(SNAPSHOT[f"{d}/{s.name}.yaml"])
        if s.eval_only and dataset in BOTH_PROTOCOL_DATASETS:
            before["MODEL.VRD.TEST.PROTOCOL"] = "both"
        now = effective_config(str(REPO / s.config), s.opts)
        expected = expected_change(f"{d}/{s.name}.yaml")
        if s.name.startswith("eval_"):  # the paper's recipe: the model after stage 4 and X_sel again
            out = f"output/{d}/{s.name}_proposals"
            expected = {"MODEL.WEIGHTS": (before["MODEL.WEIGHTS"], f"output/{d}/stage4_selection/model_final.pth")}
            expected["OUTPUT_DIR"] = (before["OUTPUT_DIR"], out)
        assert {k: (before[k], now.get(k)) for k in before if now.get(k) != before[k]} == expected, s.name
