#!/usr/bin/env python
"""
Convert torchvision's ImageNet VGG16 to a checkpoint DetectionCheckpointer loads into VRDRCNN
(VGG16 backbone + VGG16FCHead): convs -> backbone.convB_I, fc6/fc7 -> roi_heads.box_head.fc1/fc2.

    python tools/convert_torchvision_vgg.py vgg16-397923af.pth pretrained/vgg16_torchvision_d2.pth

The input is a torchvision ``vgg16().state_dict()`` file (e.g. from torchvision's model zoo). An
existing output is replaced only with ``--overwrite`` (never the input).
"""

import argparse

import torch

from vrd_d2.modeling.backbone.vgg import convert_torchvision_vgg16
from vrd_d2.utils.safe_write import atomic_open, check_output_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="torchvision vgg16 state_dict (.pth)")
    p.add_argument("output", help="output checkpoint (.pth) for MODEL.WEIGHTS")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    try:
        check_output_path(args.output, [args.input], args.overwrite, flag="output")
    except FileExistsError as e:
        p.error(str(e))
    state = torch.load(args.input, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = convert_torchvision_vgg16(state)
    checkpoint = {
        "model": model,
        "__author__": "torchvision vgg16 (tools/convert_torchvision_vgg.py)",
        "matching_heuristics": False,
    }
    with atomic_open(args.output, "wb") as f:
        torch.save(checkpoint, f)
    print(f"wrote {len(model)} tensors to {args.output}")


if __name__ == "__main__":
    main()
