"""The geometry-only head on the real VRD annotations (skipped without ../shared/data/vrd), and
tools/vrd_real.py's input checks."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import vrd_d2  # noqa: F401
from vrd_d2 import add_vrd_config
from vrd_d2.data import VRDDatasetMapper, register_all_vrd
from vrd_d2.engine import build_vrd_optimizer, vrd_real

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_VRD = os.getenv("VRD_D2_SHARED_DATA", os.path.join(REPO, "..", "shared", "data", "vrd"))
needs_vrd = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_VRD, "annotations_train.json")),
                               reason="real VRD annotations not present")


def test_missing_vrd_files_are_named(tmp_path):
    tool = vrd_real
    (tmp_path / "annotations_train.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        tool.check_vrd_root(str(tmp_path))
    msg = str(e.value)
    assert "annotations_test.json" in msg and "lu2016/evaluation/gt.mat" in msg
    assert "annotations_train.json," not in msg  # present files are not listed


@needs_vrd
def test_geometry_only_head_learns_on_real_annotations():
    """A few SGD steps on 32 real training images (no pixels read): loss_cp falls."""
    if "vrdslice_train" not in DatasetCatalog.list():
        register_all_vrd(SHARED_VRD, prefix="vrdslice_full")
        DatasetCatalog.register("vrdslice_train", lambda: [
            d for d in DatasetCatalog.get("vrdslice_full_train") if len(d["relations"])][:32])
        meta = MetadataCatalog.get("vrdslice_full_train").as_dict()
        meta.pop("name")
        MetadataCatalog.get("vrdslice_train").set(**meta)
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VRD", "geometry_only.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ("vrdslice_train",)
    cfg.MODEL.VRD.FC_DIMS = [128]
    cfg.SOLVER.BASE_LR = 0.05
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    mapper = VRDDatasetMapper(cfg, True)
    assert not mapper.load_image
    batches = []
    dicts = DatasetCatalog.get("vrdslice_train")
    for i in range(0, 32, 8):
        batches.append([mapper(d) for d in dicts[i:i + 8]])
    assert all("image" not in x for b in batches for x in b)
    opt = build_vrd_optimizer(cfg, model)
    losses = []
    with EventStorage():
        for step in range(40):
            loss = model(batches[step % 4])["loss_cp"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)


def test_lu_detections_registered_as_a_dataset(shared_vrd):
    """register_lu_detections: every test image, Lu et al.'s detections as its boxes (the same
    numbers load_lu_detections reads), the detector's confidence as score, no relations."""
    from detectron2.structures import BoxMode

    from vrd_d2.data.datasets.lu2016 import load_lu_detections
    from vrd_d2.data.datasets.lu_detections import register_lu_detections

    det_mat = str(shared_vrd / "lu2016" / "data" / "objectDetRCNN.mat")
    paths = str(shared_vrd / "lu2016" / "data" / "imagePath.mat")
    if "ludet_test_det" not in DatasetCatalog.list():
        register_all_vrd(str(shared_vrd), prefix="ludet")
        register_lu_detections("ludet_test_det", "ludet_test", det_mat, paths)
    test, dets = DatasetCatalog.get("ludet_test"), DatasetCatalog.get("ludet_test_det")
    assert [d["file_name"] for d in dets] == [d["file_name"] for d in test]
    assert MetadataCatalog.get("ludet_test_det").thing_classes == MetadataCatalog.get("ludet_test").thing_classes
    raw = {os.path.splitext(k)[0]: v for k, v in load_lu_detections(det_mat, paths).items()}
    for d in dets[:50]:
        r = raw[os.path.splitext(os.path.basename(d["file_name"]))[0]]
        assert d["relations"].shape == (0, 3)
        assert [a["bbox"] for a in d["annotations"]] == r["boxes"].tolist()
        assert [a["category_id"] for a in d["annotations"]] == r["labels"].tolist()
        assert [a["score"] for a in d["annotations"]] == r["scores"].tolist()
        assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])
