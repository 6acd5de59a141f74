"""Issue #32: MODEL.VRD is validated and resolved in one place (vrd_d2.config.resolve_vrd_config),
before any part of the model is built; vrd_d2.modeling imports nothing from vrd_d2.data, so a
model is built without reading a dataset and receives its triplet counts from its caller."""

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_config  # noqa: E402  (tests/ is on sys.path under pytest)
from detectron2.modeling import build_model

from vrd_d2.config import resolve_vrd_config

PACKAGE = REPO / "vrd_d2"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False):
    """Absolute names of every module ``source`` (the text of ``module``) imports, at any depth
    (function-level imports included), relative imports resolved; ``from X import y`` yields both
    ``X`` and ``X.y`` (``y`` may be a submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join(base + (node.module.split(".") if node.module else []))
            out += [parent] + [f"{parent}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            out += [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def _imports_data(names) -> list:
    return [n for n in names if n == "vrd_d2.data" or n.startswith("vrd_d2.data.")]


def test_the_import_walk_sees_function_level_and_relative_imports():
    source = (
        "import torch\n"
        "from .cp_triplet import TripletPrior\n"
        "def counts(cfg):\n"
        "    from ..data import get_triplet_counts\n"
        "    return get_triplet_counts(cfg)\n"
        "class A:\n"
        "    def f(self):\n"
        "        from .. import data\n"
        "        import vrd_d2.data.triplet_counts\n"
        "        importlib.import_module('vrd_d2.data')\n"
    )
    names = imported_modules(source, "vrd_d2.modeling.relation_prior")
    assert "vrd_d2.modeling.cp_triplet" in names and "torch" in names
    assert _imports_data(names) == [
        "vrd_d2.data",
        "vrd_d2.data.get_triplet_counts",
        "vrd_d2.data",
        "vrd_d2.data.triplet_counts",
        "vrd_d2.data",
    ]
    deeper = imported_modules("from ...data import mapper\n", "vrd_d2.modeling.decode.api")
    assert _imports_data(deeper) == ["vrd_d2.data", "vrd_d2.data.mapper"]
    in_init = imported_modules("from ..data import x\n", "vrd_d2.modeling", is_package=True)
    assert _imports_data(in_init) == ["vrd_d2.data", "vrd_d2.data.x"]


def test_modeling_imports_nothing_from_data():
    files = sorted((PACKAGE / "modeling").rglob("*.py"))
    assert len(files) > 10
    found = {}
    for path in files:
        names = imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py")
        if _imports_data(names):
            found[str(path.relative_to(REPO))] = _imports_data(names)
    assert found == {}


# ------------------------------------------------------------------------------ the one resolver
CHOICES = [
    ("MODEL.VRD.FEATURES", "fc7"),
    ("MODEL.VRD.MODE", "sgcls"),
    ("MODEL.VRD.TRAIN_STAGE", "all"),
    ("MODEL.VRD.TEST.PROTOCOL", "motifs"),
]


@pytest.mark.parametrize("key, value", CHOICES, ids=[k for k, _ in CHOICES])
def test_a_bad_choice_fails_in_the_resolver_before_any_part_is_built(key, value, monkeypatch):
    import detectron2.modeling.meta_arch.rcnn as rcnn

    built = []
    monkeypatch.setattr(rcnn, "build_backbone", lambda cfg: built.append(cfg))
    cfg = tiny_config("Shapes/geometry_only.yaml", key, value)
    message = f"{key} must be one of"
    with pytest.raises(ValueError, match=message) as e:
        build_model(cfg)
    assert built == []
    raised_in = Path(e.traceback[-1].path)
    assert raised_in == PACKAGE / "config.py", raised_in
    assert f"found {value!r}" in str(e.value)
    with pytest.raises(ValueError, match=message):
        resolve_vrd_config(cfg)


def _string_constants(path: Path):
    return [
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_feature_mode_and_stage_values_are_checked_only_in_config_py():
    """The modules read the resolved keys: no other file of the library says which values a key
    may take, nor imports the lists of values or the feature resolver to check them again."""
    phrases = [f"MODEL.VRD.{k} must be" for k in ("FEATURES", "MODE", "TRAIN_STAGE")]
    choice_lists = {"PAIR_FEATURES", "MODES", "TRAIN_STAGES", "resolve_pair_features", "check_vrd_config"}
    checked, imports = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if path == PACKAGE / "config.py":  # the resolver (its messages: the test above)
            continue
        hits = [p for p in phrases if any(p in s for s in _string_constants(path))]
        if hits:
            checked[rel] = hits
        if path.parent.name == "modeling" or path.name == "trainer.py":
            tree = ast.parse(path.read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
            if names & choice_lists:
                imports[rel] = sorted(names & choice_lists)
    assert checked == {}
    assert imports == {}


def test_the_resolved_config_folds_the_deprecated_switches_into_features(caplog):
    cfg = tiny_config("Shapes/geometry_only.yaml", "MODEL.VRD.FEATURES", "roi_align", "MODEL.VRD.GEOMETRY_ONLY", "True")
    cfg.freeze()
    with caplog.at_level(logging.WARNING):
        resolved = resolve_vrd_config(cfg)
    assert "MODEL.VRD.GEOMETRY_ONLY is deprecated" in caplog.text
    assert (resolved.MODEL.VRD.FEATURES, resolved.MODEL.VRD.GEOMETRY_ONLY) == ("geometry", False)
    assert resolved.is_frozen()
    assert (cfg.MODEL.VRD.FEATURES, cfg.MODEL.VRD.GEOMETRY_ONLY) == ("roi_align", True)  # the input is kept
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = resolve_vrd_config(resolved)
    assert again == resolved and "deprecated" not in caplog.text
    # the parts of a model built from the unresolved config read the resolved value
    model = build_model(cfg)
    assert model.pair_features == model.roi_heads.relation_predictor.pair_features == "geometry"


# ------------------------------------------------------------------------------ counts given to the model
def _prior_cfg(*opts):
    return tiny_config(
        "Shapes/geometry_only.yaml",
        "MODEL.VRD.USE_PRIOR",
        "True",
        "DATASETS.TRAIN",
        "('shapes_train',)",
        "DATASETS.TEST",
        "()",
        *opts,
    )


def test_building_a_model_reads_no_dataset(monkeypatch):
    from detectron2.data import DatasetCatalog

    def refuse(name):
        raise AssertionError(f"build_model read dataset {name}")

    monkeypatch.setattr(DatasetCatalog, "get", refuse)
    model = build_model(_prior_cfg())
    heads = model.roi_heads
    assert float(heads.triplet_counts.abs().sum()) == 0
    s, p = heads.num_classes, heads.relation_predictor.num_predicates
    torch.testing.assert_close(heads.prior.to_dense(), torch.full((s, p, s), 1.0 / (s * p * s), dtype=torch.float64))


def test_the_trainer_and_the_predictor_give_the_model_the_training_counts(tmp_path):
    from vrd_d2.data import get_triplet_counts
    from vrd_d2.engine.trainer import Trainer
    from vrd_d2.modeling.triplet_prior import TripletPrior
    from vrd_d2.predictor import VRDPredictor

    train = get_triplet_counts("shapes_train")
    assert train.sum() > 0
    model = Trainer.build_model(_prior_cfg())
    np.testing.assert_array_equal(model.roi_heads.triplet_counts.numpy(), train)
    torch.testing.assert_close(model.roi_heads.prior.to_dense(), TripletPrior.from_counts(train.copy()).to_dense())
    assert Trainer.build_model(_prior_cfg("MODEL.VRD.USE_PRIOR", "False")).roi_heads.triplet_counts.sum() == 0

    # a checkpoint without counts: the predictor keeps those of DATASETS.TRAIN[0]; with counts: the checkpoint's
    state = build_model(_prior_cfg()).state_dict()
    path = tmp_path / "no_counts.pth"
    torch.save({"model": state}, path)
    predictor = VRDPredictor(_prior_cfg("MODEL.WEIGHTS", str(path)))
    np.testing.assert_array_equal(predictor.model.roi_heads.triplet_counts.numpy(), train)
    state["roi_heads.triplet_counts"][1, 2, 3] = 5.0
    torch.save({"model": state}, path)
    predictor = VRDPredictor(_prior_cfg("MODEL.WEIGHTS", str(path)))
    assert float(predictor.model.roi_heads.triplet_counts.sum()) == 5.0
