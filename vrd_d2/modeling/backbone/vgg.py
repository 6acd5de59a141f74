"""VGG16 (conv1_1 - conv5_3, stride 16, no pool5) as a Detectron2 backbone.

The standard Faster R-CNN VGG16 of py-faster-rcnn: 13 3x3 convs in 5 blocks, 2x2 max-pools after
blocks 1-4, so conv5_3 has stride 16. One output feature, named by ``MODEL.VGG.OUT_FEATURE``.
``convert_torchvision_vgg16`` maps torchvision's ``vgg16().state_dict()`` to our names.
"""

import re
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["VGG16", "build_vgg16_backbone", "convert_torchvision_vgg16", "VGG16_BLOCKS"]

_FILE = "vrd_d2/modeling/backbone/vgg.py"
# (block, convs in block, width) of VGG16
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def _conv_names() -> List[str]:
    return [f"conv{b}_{i}" for b, n, _ in VGG16_BLOCKS for i in range(1, n + 1)]


class VGG16(Backbone):
    """VGG16 conv1_1 - conv5_3 with ReLUs; max-pools after blocks 1-4 (output stride 16)."""

    def __init__(self, out_feature: str = "vgg_conv5", width_divisor: int = 1, freeze_at: int = 0, norm: str = ""):
        """
        Args:
            out_feature: name of the conv5_3 output in the returned dict.
            width_divisor: divide every conv width by this (>= 1; tiny CPU variants).
            freeze_at: freeze the first ``freeze_at`` conv blocks (0-5; 5 = all 13 convs).
            norm: "" (VGG16, the paper) or "GN": GroupNorm after each conv (min(32, C/4) groups),
                for training the narrow variant from scratch; no running statistics, so a frozen
                backbone stays bit-identical in train mode.
        """
        super().__init__()
        if width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"{_FILE}: MODEL.VGG.WIDTH_DIVISOR must divide 64, found {width_divisor}")
        if norm not in ("", "GN"):
            raise ValueError(f"{_FILE}: MODEL.VGG.NORM must be '' or 'GN', found {norm!r}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"{_FILE}: freeze_at must be in [0, 5] conv blocks, found {freeze_at}")
        in_ch = 3
        self.blocks: List[List[str]] = []
        for b, n, width in VGG16_BLOCKS:
            names = []
            for i in range(1, n + 1):
                out_ch = width // width_divisor
                name = f"conv{b}_{i}"
                gn = nn.GroupNorm(max(1, min(32, out_ch // 4)), out_ch) if norm == "GN" else None
                self.add_module(name, Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=gn is None, norm=gn))
                names.append(name)
                in_ch = out_ch
            self.blocks.append(names)
        self._out_feature = out_feature
        self._out_feature_channels = {out_feature: in_ch}
        self._out_feature_strides = {out_feature: 16}
        self._out_features = [out_feature]
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> "VGG16":
        """Set requires_grad=False on the convs of the first ``freeze_at`` blocks."""
        for names in self.blocks[:freeze_at]:
            for name in names:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: Tensor[B, 3, H, W] normalized image -> {out_feature: Tensor[B, C5, ~H/16, ~W/16]}."""
        for bi, names in enumerate(self.blocks):
            for name in names:
                x = F.relu_(getattr(self, name)(x))
            if bi < 4:
                # ceil_mode as caffe's pooling, so the stride-16 map covers odd sizes
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        return {self._out_feature: x}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {self._out_feature: ShapeSpec(channels=self._out_feature_channels[self._out_feature], stride=16)}


@BACKBONE_REGISTRY.register()
def build_vgg16_backbone(cfg, input_shape: ShapeSpec) -> VGG16:
    """VGG16 from ``MODEL.VGG.*``; ``MODEL.BACKBONE.FREEZE_AT`` = frozen conv blocks."""
    if input_shape.channels != 3:
        raise ValueError(
            f"{_FILE}: VGG16 expects 3 input channels (len(MODEL.PIXEL_MEAN)), found {input_shape.channels}"
        )
    freeze_at = 5 if cfg.MODEL.VGG.FREEZE_CONVS else min(int(cfg.MODEL.BACKBONE.FREEZE_AT), 5)
    return VGG16(cfg.MODEL.VGG.OUT_FEATURE, cfg.MODEL.VGG.WIDTH_DIVISOR, freeze_at, cfg.MODEL.VGG.NORM)


# torchvision vgg16().features indices of the 13 convs (pools at 4, 9, 16, 23, 30)
_TV_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def convert_torchvision_vgg16(
    state_dict: Dict[str, torch.Tensor],
    *,
    box_head_prefix: str = "roi_heads.box_head.",
    backbone_prefix: str = "backbone.",
) -> Dict[str, torch.Tensor]:
    """torchvision ``vgg16().state_dict()`` -> the state dict of a VRDRCNN/GeneralizedRCNN with our
    VGG16 backbone and the VGG16FCHead box head.

    ``features.N.{weight,bias}`` -> ``backbone.convB_I.{weight,bias}``; ``classifier.0`` (fc6) and
    ``classifier.3`` (fc7) -> ``roi_heads.box_head.fc1`` / ``fc2`` (their 512x7x7 input flattens in
    the same C, H, W order as ROIAlign's 7x7 output); ``classifier.6`` (the 1000-way ImageNet
    classifier) is dropped. Unknown keys raise.
    """
    conv_of = dict(zip(_TV_CONV_INDICES, _conv_names()))
    fc_of = {0: "fc1", 3: "fc2"}
    out = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(features|classifier)\.(\d+)\.(weight|bias)", key)
        if m is None:
            raise ValueError(
                f"{_FILE}:convert_torchvision_vgg16: unexpected key {key!r} (expected "
                "features.N.weight/bias or classifier.N.weight/bias of torchvision's vgg16)"
            )
        part, idx, kind = m.group(1), int(m.group(2)), m.group(3)
        if part == "features":
            if idx not in conv_of:
                raise ValueError(
                    f"{_FILE}:convert_torchvision_vgg16: {key!r} is not a conv of vgg16 "
                    f"(conv indices {_TV_CONV_INDICES}); is this vgg16_bn?"
                )
            out[f"{backbone_prefix}{conv_of[idx]}.{kind}"] = value
        elif idx in fc_of:
            out[f"{box_head_prefix}{fc_of[idx]}.{kind}"] = value
    missing = set(f"{backbone_prefix}{n}.{k}" for n in _conv_names() for k in ("weight", "bias")) - set(out)
    if missing:
        raise ValueError(f"{_FILE}:convert_torchvision_vgg16: missing convs {sorted(missing)}")
    return out
