"""docs/REPRODUCING.md's "Departures from the paper" table against the configs: every row's "ours"
equals the value the named stage configs load (get_cfg + add_vrd_config + merge_from_file), on
every dataset the row holds for; the settings the issue named as unlisted are all rows."""

import os
import re

import pytest
import yaml
from config_snapshot import effective_config
from conftest import CONFIGS, REPO

STAGE_FILES = {
    "1": ["stage1_detector.yaml"],
    "2": ["stage2_triplet.yaml"],
    "3": ["stage3_selection.yaml"],
    "4": ["stage2_triplet_proposals.yaml"],
    "4b": ["stage4_selection.yaml"],
    "eval": ["eval_sgdet.yaml", "eval_phrase_cls.yaml", "eval_predcls.yaml"],
}
DATASET_DIRS = ("VRD", "VG150", "VG200")


def departure_rows(text: str):
    """The rows of the table under "## Departures from the paper": dicts of its columns, with
    ``ours`` parsed as YAML (backticks and bold removed)."""
    section = text.split("## Departures from the paper", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in section.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|"))))
        cells["key"] = cells["key"].strip("`")
        cells["ours"] = yaml.safe_load(cells["ours"].replace("**", "").strip("`"))
        rows.append(cells)
    return rows


def config_files(stages: str):
    """``"3, 4b (VRD)"`` -> the config paths under configs/ of those stages and datasets."""
    m = re.fullmatch(r"([\w, ]+?)(?: \((\w+)\))?", stages)
    assert m, f"bad stages cell {stages!r}"
    datasets = [m.group(2)] if m.group(2) else DATASET_DIRS
    return [f"{d}/{f}" for d in datasets for s in m.group(1).split(", ") for f in STAGE_FILES[s]]


def mismatches(rows):
    """``[(key, config, ours, loaded)]`` for every row and config where they differ."""
    out, cache = [], {}
    for row in rows:
        for name in config_files(row["stages"]):
            if name not in cache:
                cache[name] = effective_config(str(CONFIGS / name))
            assert row["key"] in cache[name], f"{row['key']} is no config key"
            if cache[name][row["key"]] != row["ours"]:
                out.append((row["key"], name, row["ours"], cache[name][row["key"]]))
    return out


@pytest.fixture(scope="module")
def rows():
    return departure_rows((REPO / "docs" / "REPRODUCING.md").read_text())


def test_every_ours_value_is_what_the_configs_load(rows):
    assert len(rows) >= 40
    assert mismatches(rows) == []


def test_a_stale_row_is_found(rows):
    stale = [dict(r) for r in rows]
    lr = next(r for r in stale if r["key"] == "SOLVER.BASE_LR" and r["stages"] == "3, 4b")
    lr["ours"] = 0.0001  # the paper's value, which the stage-3 configs do not use
    found = mismatches(stale)
    assert len(found) == 6 and {f[1] for f in found} == {
        f"{d}/{s}" for d in DATASET_DIRS for s in ("stage3_selection.yaml", "stage4_selection.yaml")
    }
    assert all(f[3] == 0.001 for f in found)


def test_the_unlisted_settings_of_the_issue_are_rows(rows):
    by_key = {(r["key"], r["stages"]): r for r in rows}
    for key in (
        "SOLVER.WARMUP_ITERS",
        "SOLVER.IMS_PER_BATCH",
        "INPUT.MIN_SIZE_TRAIN",
        "INPUT.MAX_SIZE_TRAIN",
        "SOLVER.MOMENTUM",
        "SOLVER.WEIGHT_DECAY",
        "MODEL.VRD.SPATIAL_CONV_DIMS",
        "MODEL.VRD.CP_INIT_BIAS_STD",
        "MODEL.VRD.SELECTION_NEG_PER_POS",
    ):
        assert any(k == key and r["paper"].startswith(("not stated", "2 convs")) for (k, _), r in by_key.items()), key
    stage3 = by_key[("SOLVER.BASE_LR", "3, 4b")]
    assert stage3["paper"] == "1e-4" and stage3["ours"] == 0.001


def test_stages_cells_name_config_files_that_exist():
    files = config_files("1, 2, 3, 4, 4b, eval") + config_files("3 (VG150)")
    assert len(files) == 3 * 8 + 1 and all(os.path.isfile(CONFIGS / f) for f in files)
    assert config_files("3, 4b (VRD)") == ["VRD/stage3_selection.yaml", "VRD/stage4_selection.yaml"]
