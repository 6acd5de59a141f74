#!/usr/bin/env python
"""
Peak memory of relation inference vs. the number of boxes per image (pairs = n (n - 1)).

    python tools/benchmark_inference_memory.py --config-file configs/Shapes/Base-Shapes.yaml \
        --boxes 25 50 100 [KEY VALUE ...]

Each box count runs in a fresh process (gold-box mode, random boxes on a random image, random
weights): on CUDA the peak is torch.cuda.max_memory_allocated; on CPU it is the growth of the
process's peak resident set (ru_maxrss) during the measured call over a warm-up call with 2 boxes.
The relation head runs pairs in chunks of MODEL.VRD.TEST.PAIR_BATCH and keeps only per-pair top-k
lists, so the peak should grow at most linearly in the number of pairs: the printed
"bytes / pair" column should not grow with n.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(config_file, n_boxes, opts, device):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    sys.path.insert(0, REPO)
    import vrd_d2.modeling  # noqa: F401
    from vrd_d2.config import add_vrd_config

    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.DATASETS.TRAIN = ()  # random weights, uniform prior: no dataset needed
    cfg.MODEL.DEVICE = device
    cfg.MODEL.VRD.MODE = "phrase_cls"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    size = cfg.INPUT.MIN_SIZE_TEST

    def inputs(n):
        g = torch.Generator().manual_seed(n)
        xy = torch.rand(n, 2, generator=g) * (size * 0.8)
        wh = 4 + torch.rand(n, 2, generator=g) * size * 0.2
        inst = Instances(
            (size, size),
            gt_boxes=Boxes(torch.cat((xy, xy + wh), 1)),
            gt_classes=torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (n,), generator=g),
        )
        return [{"image": torch.rand(3, size, size, generator=g) * 255, "instances": inst}]

    with torch.no_grad():
        model(inputs(2))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = model(inputs(n_boxes))[0]["relations"]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"boxes": n_boxes, "pairs": n_boxes * (n_boxes - 1), "peak_bytes": int(peak), "rows": len(out)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "Shapes", "Base-Shapes.yaml"))
    p.add_argument("--boxes", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.config_file, args.worker, args.opts, args.device)))
        return 0
    rows = []
    for n in args.boxes:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--config-file",
            args.config_file,
            "--device",
            args.device,
            "--worker",
            str(n),
        ] + args.opts
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{'boxes':>6} {'pairs':>7} {'peak MiB':>9} {'bytes/pair':>11} {'ratio vs first':>15}")
    first = rows[0]["peak_bytes"] / rows[0]["pairs"]
    for r in rows:
        bpp = r["peak_bytes"] / r["pairs"]
        print(f"{r['boxes']:>6} {r['pairs']:>7} {r['peak_bytes'] / 2**20:>9.1f} {bpp:>11.0f} {bpp / first:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
