"""VGG16 backbone: stride-16 conv5_3, freezing, torchvision weight conversion and loading."""

import os

import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model

import vrd_d2.modeling  # noqa: F401
from vrd_d2.config import add_vrd_config
from vrd_d2.modeling.backbone.vgg import VGG16, convert_torchvision_vgg16


def _cfg(width_divisor=16):
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-VRD-CP.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VGG.WIDTH_DIVISOR = width_divisor
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.VRD.NUM_PREDICATES = 2
    cfg.MODEL.VRD.FC_DIMS = [8]
    cfg.MODEL.VRD.SELECTION_FC_DIM = 8
    cfg.MODEL.VRD.SPATIAL_DIM = 8
    cfg.MODEL.VRD.SPATIAL_CONV_DIMS = [2, 2]
    return cfg


def test_output_shape_and_stride():
    torch.manual_seed(0)
    net = VGG16("vgg_conv5", width_divisor=16)
    out = net(torch.randn(2, 3, 64, 96))
    assert list(out) == ["vgg_conv5"]
    assert out["vgg_conv5"].shape == (2, 512 // 16, 64 // 16, 96 // 16)
    assert net.output_shape()["vgg_conv5"] == ShapeSpec(channels=32, stride=16)
    # 13 convs, named as in the paper / py-faster-rcnn
    convs = [n for n, _ in net.named_children()]
    assert convs == [
        "conv1_1",
        "conv1_2",
        "conv2_1",
        "conv2_2",
        "conv3_1",
        "conv3_2",
        "conv3_3",
        "conv4_1",
        "conv4_2",
        "conv4_3",
        "conv5_1",
        "conv5_2",
        "conv5_3",
    ]


@pytest.mark.parametrize("freeze_at,frozen", [(0, 0), (2, 4), (5, 13)])
def test_freeze_at_counts_conv_blocks(freeze_at, frozen):
    net = VGG16(width_divisor=16, freeze_at=freeze_at)
    n_frozen = sum(not m.weight.requires_grad for m in net.children())
    assert n_frozen == frozen


def test_registry_builds_from_config():
    cfg = _cfg()
    cfg.MODEL.VGG.FREEZE_CONVS = True
    net = BACKBONE_REGISTRY.get("build_vgg16_backbone")(cfg, ShapeSpec(channels=3))
    assert not any(p.requires_grad for p in net.parameters())
    cfg.MODEL.VGG.FREEZE_CONVS = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    net = BACKBONE_REGISTRY.get("build_vgg16_backbone")(cfg, ShapeSpec(channels=3))
    assert not net.conv2_2.weight.requires_grad and net.conv3_1.weight.requires_grad


def test_torchvision_vgg16_converts_and_loads(tmp_path):
    """torchvision vgg16(weights=None) -> converter -> DetectionCheckpointer -> equal tensors and
    equal conv5_3 activations (torchvision's features[:30] = conv1_1 ... relu5_3, before pool5)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None).eval()
    converted = convert_torchvision_vgg16(tv.state_dict())
    path = tmp_path / "vgg16_d2.pth"
    torch.save({"model": converted, "matching_heuristics": False}, path)

    cfg = _cfg(width_divisor=1)
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 4096
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(path))
    sd = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(sd[key], value), key
    assert torch.equal(sd["backbone.conv5_3.weight"], tv.features[28].weight)
    assert torch.equal(sd["roi_heads.box_head.fc2.weight"], tv.classifier[3].weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)["vgg_conv5"]
        ref = tv.features[:30](x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    del tv, model, sd


def test_converter_rejects_foreign_keys():
    with pytest.raises(ValueError, match="unexpected key"):
        convert_torchvision_vgg16({"layer1.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="vgg16_bn"):
        convert_torchvision_vgg16({"features.1.weight": torch.zeros(1)})


def test_own_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    a = build_model(cfg).eval()
    DetectionCheckpointer(a, save_dir=str(tmp_path)).save("m")
    torch.manual_seed(1)
    b = build_model(cfg).eval()
    assert not torch.equal(a.backbone.conv1_1.weight, b.backbone.conv1_1.weight)
    DetectionCheckpointer(b).load(str(tmp_path / "m.pth"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
