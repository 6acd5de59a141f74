"""SOLVER values a training run cannot use are refused by the Trainer, naming the key, before the
model, the data or a single iteration exists."""

import pytest

from vrd_d2.engine import Trainer, check_solver, resolve_schedule


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.EPOCHS", "2.0", "SOLVER.IMS_PER_BATCH", "0"], r"SOLVER.IMS_PER_BATCH must be >= 1, found 0"),
        (["SOLVER.IMS_PER_BATCH", "-4"], r"SOLVER.IMS_PER_BATCH must be >= 1, found -4"),
        (["SOLVER.MAX_ITER", "-10"], r"SOLVER.MAX_ITER \(SOLVER.EPOCHS is 0\) must be >= 1, found -10"),
        (["SOLVER.EPOCHS", "-1.0"], r"SOLVER.EPOCHS must be >= 0.0, found -1.0"),
    ],
)
def test_bad_solver_values_are_refused_before_training(tiny_cfg, tmp_path, monkeypatch, opts, message):
    cfg = tiny_cfg("Shapes/geometry_only.yaml", "OUTPUT_DIR", str(tmp_path), *opts)
    built = []
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, c: built.append("model")))
    monkeypatch.setattr(Trainer, "build_train_loader", classmethod(lambda cls, c: built.append("data")))
    with pytest.raises(ValueError, match=r"config: " + message):
        Trainer(cfg)
    with pytest.raises(ValueError, match=message):
        resolve_schedule(cfg, num_images=10)  # a ZeroDivisionError / silent schedule before
    assert built == [] and list(tmp_path.iterdir()) == []


def test_valid_solver_passes(tiny_cfg):
    check_solver(tiny_cfg("Shapes/geometry_only.yaml"))
    cfg = tiny_cfg("Shapes/geometry_only.yaml", "SOLVER.EPOCHS", "2.0", "SOLVER.IMS_PER_BATCH", "4")
    assert resolve_schedule(cfg, num_images=10).SOLVER.MAX_ITER == 5  # ceil(2 * 10 / 4)
