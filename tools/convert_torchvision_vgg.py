#!/usr/bin/env python
"""
Convert torchvision's ImageNet VGG16 to a checkpoint DetectionCheckpointer loads into VRDRCNN
(VGG16 backbone + VGG16FCHead): convs -> backbone.convB_I, fc6/fc7 -> roi_heads.box_head.fc1/fc2.

    python tools/convert_torchvision_vgg.py vgg16-397923af.pth pretrained/vgg16_torchvision_d2.pth

The input is a torchvision ``vgg16().state_dict()`` file (e.g. from torchvision's model zoo).
"""

import argparse
import os

import torch

from vrd_d2.modeling.backbone.vgg import convert_torchvision_vgg16


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="torchvision vgg16 state_dict (.pth)")
    p.add_argument("output", help="output checkpoint (.pth) for MODEL.WEIGHTS")
    args = p.parse_args(argv)
    state = torch.load(args.input, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = convert_torchvision_vgg16(state)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(
        {
            "model": model,
            "__author__": "torchvision vgg16 (tools/convert_torchvision_vgg.py)",
            "matching_heuristics": False,
        },
        args.output,
    )
    print(f"wrote {len(model)} tensors to {args.output}")


if __name__ == "__main__":
    main()
