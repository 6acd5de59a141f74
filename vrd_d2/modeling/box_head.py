"""VGG16's fc6/fc7 as a Detectron2 box head (two FC layers, 4096 in the paper)."""

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead
from torch import nn

__all__ = ["VGG16FCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class VGG16FCHead(FastRCNNConvFCHead):
    """FastRCNNConvFCHead (``MODEL.ROI_BOX_HEAD.NUM_FC`` FCs of ``FC_DIM``, named fc1, fc2 so that
    torchvision's fc6/fc7 load into them) with VGG's dropout after each FC."""

    @configurable
    def __init__(self, input_shape, *, conv_dims, fc_dims, conv_norm="", dropout: float = 0.0):
        """
        Args:
            input_shape, conv_dims, fc_dims, conv_norm: as FastRCNNConvFCHead.
            dropout: dropout probability after each FC (training only).
        """
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims, conv_norm=conv_norm)
        self.dropout = float(dropout)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["dropout"] = cfg.MODEL.ROI_BOX_HEAD.DROPOUT
        return ret

    def forward(self, x):
        for layer in self:
            x = layer(x)
            if isinstance(layer, nn.ReLU) and self.dropout > 0 and x.dim() == 2:
                x = F.dropout(x, self.dropout, self.training)
        return x
