"""The paper's pipeline as data: the stages of a dataset (stage 1 -> 2 -> 3 -> 4 (the triplet net
on proposals) -> X_sel again -> evaluation in sgdet, phrase_cls and predcls; the Table 4 ablation of :mod:`vrd_d2.engine.table4`), the
``tools/train_net.py`` command of each, which are finished (resumable runs), the dataset files
they need, and the paper's tables from the evaluation outputs. ``tools/reproduce.py`` drives it.

VG150 / VG200 evaluations report both protocols (``MODEL.VRD.TEST.PROTOCOL both``, results
``{"lu": ..., "sgb": ...}``): Lu et al.'s columns and the Scene-Graph-Benchmark's side by side in
one table (docs/EVALUATION.md)."""

import json
import os
import shlex
import sys
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import MODES
from .cp_health import stage_cp_usage, triplet_steps_usage
from .finished_outputs import checkpoint_problem, evaluation_problem, resumes_from_final
from .pipeline_overrides import check_reproduce_overrides
from .table4 import ablation_runs
from .tables import SGB_COLUMNS, format_table, table_rows, write_tables

__all__ = [
    "Step",
    "DATASETS",
    "EVAL_MODES",
    "plan_steps",
    "check_opts",
    "step_command",
    "is_finished",
    "output_problem",
    "missing_dataset_files",
    "collect_results",
    "format_table",
    "TABLE_TITLES",
    "format_command",
    "evaluation_file",
    "write_tables",
    "eval_dataset_of",
    "reproduce",
    "table_rows",
    "BOTH_PROTOCOL_DATASETS",
    "SGB_COLUMNS",
]

DATASETS = {"vrd": "VRD", "vg150": "VG150", "vg200": "VG200"}
ABLATION_DATASETS = ("vrd", "vg150")
EVAL_MODES = MODES  # one evaluation step per mode, in this order
TABLE_TITLES = {"vrd": "Table 1 (VRD)", "vg200": "Table 2 (VG200)", "vg150": "Table 3 (VG150)"}
DEFAULT_OUTPUT_ROOT = "output"
# evaluated with Lu's and SGB's protocol (the VG community's; the paper's Tables 2 and 3 stand beside it)
BOTH_PROTOCOL_DATASETS = ("vg150", "vg200")
BOTH_PROTOCOL_OPTS = ("MODEL.VRD.TEST.PROTOCOL", "both")


@dataclass(frozen=True)
class Step:
    """One ``tools/train_net.py`` run.

    ``config`` is relative to the repository; ``output_dir`` and ``weights`` are what the run
    will use (after ``opts``, the overrides of ``config``); ``label`` names the row of the table for
    evaluation steps."""

    name: str
    config: str
    eval_only: bool
    output_dir: str
    weights: str
    opts: Tuple[str, ...] = ()
    label: str = ""


def _load(repo: str, config: str, opts: Sequence[str]):
    from detectron2.config import get_cfg

    from ..config import add_vrd_config

    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(os.path.join(repo, config))
    cfg.merge_from_list(list(opts))
    return cfg


def _relocate(path: str, output_root: str) -> str:
    """``output/X`` -> ``<output_root>/X`` (other paths unchanged)."""
    head = DEFAULT_OUTPUT_ROOT + "/"
    if output_root == DEFAULT_OUTPUT_ROOT or not path.startswith(head):
        return path
    return os.path.join(output_root, path[len(head) :])


def _step(repo, name, config, eval_only, output_root, label="", weights=None, output_dir=None, opts=()) -> Step:
    """The step running ``config`` with the overrides ``opts``, its paths (``weights``,
    ``output_dir``: the config's after ``opts`` when not given) moved under ``output_root``."""
    paths = ("MODEL.WEIGHTS", "OUTPUT_DIR")
    cfg = _load(repo, config, opts)
    weights = weights if weights is not None else _relocate(cfg.MODEL.WEIGHTS, output_root)
    output_dir = output_dir if output_dir is not None else _relocate(cfg.OUTPUT_DIR, output_root)
    file_cfg = _load(repo, config, ())
    opts = [x for k, v in zip(opts[::2], opts[1::2]) if k not in paths for x in (k, v)]
    if weights != file_cfg.MODEL.WEIGHTS:
        opts += ["MODEL.WEIGHTS", weights]
    if output_dir != file_cfg.OUTPUT_DIR:
        opts += ["OUTPUT_DIR", output_dir]
    return Step(name, config, eval_only, output_dir, weights, tuple(opts), label)


def check_opts(dataset: str, opts: Sequence[str], repo: str = ".") -> None:
    """Raise one ValueError naming the problem when the trailing ``KEY VALUE`` overrides ``opts``
    cannot go to every step of ``dataset``: an odd count, a path the pipeline sets per step
    (MODEL.WEIGHTS, OUTPUT_DIR), a key no config has, or a value of the wrong type."""
    where = f"tools/reproduce.py --dataset {dataset}"
    check_reproduce_overrides(opts)  # pairs, none of the per-stage paths
    if dataset in DATASETS:
        try:
            _load(repo, f"configs/{DATASETS[dataset]}/stage2_triplet.yaml", opts)
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            msg = str(e).strip("'\"") or type(e).__name__
            raise ValueError(f"{where}: bad config override in {list(opts)}: {msg}") from None


def plan_steps(
    dataset: str,
    *,
    proposals: bool = True,
    ablation: bool = False,
    repo: str = ".",
    output_root: str = DEFAULT_OUTPUT_ROOT,
) -> List[Step]:
    """The steps of ``dataset`` ("vrd" | "vg150" | "vg200") in order, each reading the previous
    one's ``model_final.pth`` (the configs' MODEL.WEIGHTS, moved under ``output_root``).

    ``proposals`` (the paper's recipe, the default): stage 4 (triplet net on RPN proposals), then
    stage 3 again on its output (the selection head reads the retrained spatial branch), and
    evaluation of that model; False stops the chain at stage 3 (a model the paper did not evaluate).
    ``ablation``: the Table 4 rows (VRD and VG150), each rank with its own stage 2 -> 3 chain.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, found {dataset!r}")
    if ablation and dataset not in ABLATION_DATASETS:
        raise ValueError(f"the Table 4 ablation exists for {ABLATION_DATASETS} (the paper's), not {dataset!r}")
    d = f"configs/{DATASETS[dataset]}"
    steps = [
        _step(repo, s, f"{d}/{s}.yaml", False, output_root)
        for s in ("stage1_detector", "stage2_triplet", "stage3_selection")
    ]
    final = steps[-1]
    if proposals:
        steps += [
            _step(repo, s, f"{d}/{s}.yaml", False, output_root)
            for s in ("stage2_triplet_proposals", "stage4_selection")
        ]
        final = steps[-1]
    for mode in EVAL_MODES:
        if proposals:
            steps.append(
                _step(
                    repo,
                    f"eval_{mode}",
                    f"{d}/eval_{mode}.yaml",
                    True,
                    output_root,
                    label=mode,
                    weights=os.path.join(final.output_dir, "model_final.pth"),
                    output_dir=os.path.join(output_root, DATASETS[dataset], f"eval_{mode}_proposals"),
                )
            )
        else:
            steps.append(_step(repo, f"eval_{mode}", f"{d}/eval_{mode}.yaml", True, output_root, label=mode))
    if ablation:
        steps += [
            _step(repo, f"ablations/{a.name}", f"{d}/{a.config}", a.eval_only, output_root, a.label, opts=a.opts)
            for a in ablation_runs(DATASETS[dataset])
        ]
    if dataset in BOTH_PROTOCOL_DATASETS:
        steps = [replace(s, opts=s.opts + BOTH_PROTOCOL_OPTS) if s.eval_only else s for s in steps]
    return steps


def step_command(
    step: Step, *, num_gpus: int = 1, python: str = sys.executable, extra_opts: Sequence[str] = ()
) -> List[str]:
    """``tools/train_net.py`` argv of ``step``: training with ``--resume`` (continues an
    interrupted stage from its last checkpoint, else starts from MODEL.WEIGHTS), evaluation
    with ``--eval-only``."""
    return [
        python,
        "tools/train_net.py",
        "--config-file",
        step.config,
        "--num-gpus",
        str(num_gpus),
        "--eval-only" if step.eval_only else "--resume",
        *step.opts,
        *extra_opts,
    ]


def format_command(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def evaluation_file(step: Step, test_dataset: str) -> str:
    return os.path.join(step.output_dir, "inference", test_dataset, "vrd_evaluation.json")


def output_problem(step: Step, test_dataset: str, repo: str = ".") -> Optional[str]:
    """None when ``step`` is finished; else "missing" or what is wrong with its output file
    (``model_final.pth`` of a training step, ``vrd_evaluation.json`` of an evaluation)."""
    if step.eval_only:
        path = os.path.join(repo, evaluation_file(step, test_dataset))
        return evaluation_problem(path) if os.path.isfile(path) else "missing"
    path = os.path.join(repo, step.output_dir, "model_final.pth")
    return checkpoint_problem(path) if os.path.isfile(path) else "missing"


def is_finished(step: Step, test_dataset: str, repo: str = ".") -> bool:
    """A training step is finished when its ``model_final.pth`` is a complete checkpoint, an
    evaluation step when its ``vrd_evaluation.json`` holds results (:func:`output_problem`)."""
    return output_problem(step, test_dataset, repo) is None


def missing_dataset_files(dataset: str, datasets_root: str) -> List[str]:
    """Every file or folder the builtin registration of ``dataset`` reads, that is absent."""
    if dataset == "vrd":
        root = os.path.join(datasets_root, "vrd")
        need = [
            "annotations_train.json",
            "annotations_test.json",
            "objects.json",
            "predicates.json",
            "sg_train_images/",
            "sg_test_images/",
        ]
    elif dataset == "vg150":
        root = os.path.join(datasets_root, "vg")
        need = ["VG-SGG-dicts-with-attri.json", "image_data.json", "VG_100K/"]
        if not os.path.isfile(os.path.join(root, "VG-SGG.h5")):
            need.insert(0, "VG-SGG-with-attri.h5")
    elif dataset == "vg200":
        root = os.path.join(datasets_root, "vg200")
        need = ["vg1_2_meta.h5", "images/"]
    else:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, found {dataset!r}")
    out = []
    for n in need:
        p = os.path.join(root, n)
        if not (os.path.isdir(p) if n.endswith("/") else os.path.isfile(p)):
            out.append(p)
    return out


def collect_results(steps: Sequence[Step], test_dataset: str, repo: str = ".") -> Dict[str, dict]:
    """``{label: results}`` of the finished evaluation steps (``vrd_evaluation.json``)."""
    out = {}
    for s in steps:
        f = os.path.join(repo, evaluation_file(s, test_dataset))
        if s.eval_only and output_problem(s, test_dataset, repo) is None:
            with open(f) as fh:
                out[s.label] = json.load(fh)["results"]
    return out


def eval_dataset_of(step: Step, repo: str = ".") -> Optional[str]:
    cfg = _load(repo, step.config, step.opts)
    return cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None


def reproduce(
    dataset: str,
    *,
    proposals: bool = True,
    ablation: bool = False,
    num_gpus: int = 1,
    output_root: str = DEFAULT_OUTPUT_ROOT,
    dry_run: bool = False,
    opts: Sequence[str] = (),
    repo: str = ".",
    datasets_root: str = "datasets",
    run=None,
    out=sys.stdout,
    cp_usage=None,
) -> List[List[str]]:
    """Run (or with ``dry_run`` print) the steps of :func:`plan_steps` that are not finished,
    each through ``run(argv)`` with the working directory ``repo``, then write the tables under
    ``<output_root>/<DATASET>/``. Returns the commands run (printed, for a dry run).

    Missing dataset files (and the ImageNet VGG16 weights, while stage 1 is not finished) raise one
    FileNotFoundError listing every missing path, before anything runs. After the runs, every
    finished triplet-net stage (2, 4, each Table 4 rank) gets its CP component usage on held-out
    pairs, ``cp_usage(step)`` (default :func:`~vrd_d2.engine.cp_health.stage_cp_usage` of the step
    with ``opts``), logged, saved and carried by the tables, a collapsed net as a warning."""
    from ..utils.checks import check_int

    check_int(num_gpus, "--num-gpus", low=1, where="tools/reproduce.py")
    check_opts(dataset, opts, repo)
    steps = plan_steps(dataset, proposals=proposals, ablation=ablation, repo=repo, output_root=output_root)
    test_dataset = eval_dataset_of(steps[-1], repo)
    commands = []
    if not dry_run:
        missing = missing_dataset_files(dataset, datasets_root)
        first = steps[0]
        weights = os.path.join(repo, first.weights)
        if (
            first.weights
            and "://" not in first.weights
            and not is_finished(first, test_dataset, repo)
            and not os.path.isfile(weights)
        ):
            missing.append(f"{weights} (ImageNet VGG16: tools/convert_torchvision_vgg.py)")
        if missing:
            raise FileNotFoundError(
                f"tools/reproduce.py --dataset {dataset}: {len(missing)} missing file(s) "
                f"(datasets under $DETECTRON2_DATASETS={datasets_root}):\n  " + "\n  ".join(missing)
            )
    for s in steps:
        argv = step_command(s, num_gpus=num_gpus, extra_opts=opts)
        problem = output_problem(s, test_dataset, repo)
        if problem is None:
            print(f"# {s.name}: finished, skipped ({s.output_dir})", file=out)
            continue
        if problem != "missing":
            print(f"# {s.name}: corrupt, rerunning: {problem}", file=out)
            if not s.eval_only and resumes_from_final(os.path.join(repo, s.output_dir)):
                argv.remove("--resume")  # it would load the corrupt file: train the stage again
        print(format_command(argv), file=out, flush=True)
        commands.append(argv)
        if not dry_run:
            run(argv)
    if not dry_run:
        if cp_usage is None:
            cp_usage = lambda s: stage_cp_usage(s.config, s.opts + tuple(opts), s.output_dir, repo)  # noqa: E731
        usage = triplet_steps_usage(steps, repo, cp_usage, out)
        results = collect_results(steps, test_dataset, repo)
        base = os.path.join(repo, output_root, DATASETS[dataset])
        main = {k: v for k, v in results.items() if k in EVAL_MODES}
        main_usage = {k: v for k, v in usage.items() if not k.startswith("ablations/")}
        for path in write_tables(os.path.join(base, "table"), TABLE_TITLES[dataset], main, main_usage):
            print(f"wrote {path}", file=out)
        if ablation:
            rows = {k: v for k, v in results.items() if k not in EVAL_MODES}
            rank_usage = {k: v for k, v in usage.items() if k.startswith("ablations/")}
            for path in write_tables(
                os.path.join(base, "table4"), f"Table 4 ({DATASETS[dataset]}): phrase classification", rows, rank_usage
            ):
                print(f"wrote {path}", file=out)
    return commands
