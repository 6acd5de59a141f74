"""The effective configs (get_cfg + add_vrd_config + merge_from_file) of every config file as they
were before the configs were reorganised (issue #32, commit 2fd5090), kept in
tests/data/config_snapshot.json: every file's flattened config as its differences from
Base-VRD-CP.yaml's. test_config_changes.py compares today's files, and the replacement of every
removed file, with it.

Regenerate from the configs of a commit (only when a config key is renamed on purpose), or print
the rows of docs/CONFIG_CHANGES.md's table::

    PYTHONPATH=$PWD python tests/config_snapshot.py 2fd5090
    PYTHONPATH=$PWD python tests/config_snapshot.py --doc-rows
"""

import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Dict, List, Sequence

import yaml

SNAPSHOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "config_snapshot.json")
BASE = "Base-VRD-CP.yaml"


def _flatten(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def effective_config(path: str, opts: Sequence[str] = ()) -> Dict[str, object]:
    """``{"MODEL.VRD.RANK": 5, ...}``: the config ``tools/train_net.py --config-file path opts``
    would run with (before its command-line-only settings), as plain JSON values."""
    from detectron2.config import get_cfg

    from vrd_d2.config import add_vrd_config
    from vrd_d2_studies.shapes_demo.config import add_shapes_demo_config

    cfg = get_cfg()
    add_vrd_config(cfg)
    # MODEL.BACKBONE_PRETRAIN (stage 0) moved from vrd_d2's keys to the shapes demo's: added for
    # every file, so that each config has the keys it had at the snapshot's commit
    add_shapes_demo_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return json.loads(json.dumps(_flatten(yaml.safe_load(cfg.dump()))))


def make_snapshot(config_root: str) -> dict:
    base = effective_config(os.path.join(config_root, BASE))
    configs = {}
    for path in sorted(glob.glob(os.path.join(config_root, "**", "*.yaml"), recursive=True)):
        flat = effective_config(path)
        assert set(flat) == set(base), path
        configs[os.path.relpath(path, config_root)] = {k: v for k, v in flat.items() if v != base[k]}
    return {"base_file": BASE, "base": base, "configs": configs}


def load_snapshot() -> Dict[str, Dict[str, object]]:
    """``{config path under configs/: its effective flattened config}`` of the snapshot."""
    with open(SNAPSHOT) as f:
        snap = json.load(f)
    return {name: {**snap["base"], **diff} for name, diff in snap["configs"].items()}


def replacement_command(dataset_dir: str, run) -> str:
    """``tools/train_net.py ...`` of an :class:`vrd_d2.engine.table4.AblationRun`: the replacement
    of ``configs/<dataset_dir>/ablations/<run.name>.yaml`` (docs/CONFIG_CHANGES.md)."""
    flag = ["--eval-only"] if run.eval_only else []
    return " ".join(["tools/train_net.py", "--config-file", f"configs/{dataset_dir}/{run.config}", *flag, *run.opts])


def replacement_rows() -> List[str]:
    """The rows of docs/CONFIG_CHANGES.md's table: removed file, then the command replacing it."""
    from vrd_d2.engine.pipeline import ABLATION_DATASETS, DATASETS
    from vrd_d2.engine.table4 import ablation_runs

    rows = []
    for d in (DATASETS[k] for k in ABLATION_DATASETS):
        for run in ablation_runs(d):
            rows.append(f"| `configs/{d}/ablations/{run.name}.yaml` | `{replacement_command(d, run)}` |")
    return rows


def main(commit: str) -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "configs.tar")
        subprocess.run(["git", "-C", repo, "archive", "-o", archive, commit, "configs"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp)
        snap = make_snapshot(os.path.join(tmp, "configs"))
    snap["commit"] = commit
    with open(SNAPSHOT, "w") as f:
        json.dump(snap, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {SNAPSHOT}: {len(snap['configs'])} configs")


if __name__ == "__main__":
    if sys.argv[1] == "--doc-rows":  # the table of docs/CONFIG_CHANGES.md
        print("\n".join(replacement_rows()))
    else:
        main(sys.argv[1])
