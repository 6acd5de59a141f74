"""Per-image time and peak memory of the whole model (tools/benchmark_model.py).

Rows, each on the same real images (one image per call, after ``warmup`` untimed calls):

* stage-2 and stage-3 training: forward + backward of the stage's loss (no optimizer step);
* inference in predcls, phrase_cls and sgdet, each twice in one run: with our exact decoding and
  with the paper's dense decoding (:class:`BenchRelationInference` with ``dense=True``: psi_c psi_u
  for every triplet of a pair, then top-K); both return the same relations (checked per image);
* relation scoring at VG150 size (151 classes, 51 predicates, gold boxes, phrase_cls): the
  decoding step after the features, ours vs dense on the same logits, as they are and "peaked"
  (the CP log-factors multiplied by one scalar per chunk of pairs so that their standard deviation
  over classes is ``peak_std``: random weights give flat logits, std about 0.004, a trained net
  peaked ones).

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the resident set's high-water
mark during the row, sampled every few ms from /proc/self/statm (ru_maxrss cannot be reset).
Weights are random (seed 0): the timings do not depend on them except the decoding, see above.
"""

import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import Tensor

from vrd_d2.checkpoint import VRDCheckpointer
from vrd_d2.config import add_vrd_config
from vrd_d2.data.datasets.vrd import load_vrd_split
from vrd_d2.data.mapper import VRDDatasetMapper
from vrd_d2.data.triplet_counts import compute_triplet_counts
from vrd_d2.modeling.decode import dense_topk_triplets
from vrd_d2.modeling.decode.dense import dense_predicates_given_labels
from vrd_d2.modeling.relation_inference import RelationInference

from .peak_memory import PeakMemory, sync

__all__ = ["dense_predicates_given_labels", "BenchRelationInference", "PeakMemory", "load_sample_records"]
__all__ += ["load_train_records"]
__all__ += ["same_relations", "same_decoding", "run_benchmark", "format_table"]

# the rows: (name, config file under configs/, what it runs)
TRAIN_ROWS = (
    ("stage2_train", "VRD/stage2_triplet.yaml", "triplet"),
    ("stage3_train", "VRD/stage3_selection.yaml", "selection"),
)
INFERENCE_ROWS = (
    ("predcls", "VRD/eval_predcls.yaml"),
    ("phrase_cls", "VRD/eval_phrase_cls.yaml"),
    ("sgdet", "VRD/eval_sgdet.yaml"),
)
VG150_CONFIG = "VG150/eval_phrase_cls.yaml"
VG150_SIZE = (151, 51)  # classes, predicates (tools/benchmark_cp.py's VG150 size)
PRIORS = ("train", "images")  # what the random models' prior counts (run_benchmark)


class BenchRelationInference(RelationInference):
    """RelationInference that times its decoding step (``decode_seconds``, summed over calls),
    optionally decodes densely (the paper) and optionally multiplies the CP log-factors by
    a scalar before decoding so that their mean standard deviation over classes is ``peak_std``
    (peaked logits from a random net; ``scales`` lists the scalars)."""

    def __init__(self, *args, dense: bool = False, peak_std: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dense, self.peak_std = dense, peak_std
        self.reset()
        if dense:
            self.decode_triplets = dense_topk_triplets
            self.decode_predicates = dense_predicates_given_labels

    def reset(self) -> None:
        """Clear ``decode_seconds``, ``pairs`` (decoded), ``decoded`` (per chunk: log-scores
        [N, k'], triplets [N, k', 3]) and ``stds`` (per chunk: the decoded CP log-factors' mean
        standard deviation over classes)."""
        self.decode_seconds, self.pairs, self.decoded, self.scales, self.stds = 0.0, 0, [], [], []

    def _decode(self, out, pairs, weight, instances, prior):
        keys = ("s_s", "s_p", "s_o")
        std = torch.stack([out[k].std(-1).mean() for k in keys]).mean()
        if self.peak_std:
            scale = self.peak_std / std.clamp(min=1e-12)
            out = {**out, **{k: out[k] * scale for k in keys}}
            self.scales.append(float(scale))
            std = std * scale
        self.stds.append(float(std))
        device = out["s_s"].device
        sync(device)
        t = time.perf_counter()
        res = super()._decode(out, pairs, weight, instances, prior)
        sync(device)
        self.decode_seconds += time.perf_counter() - t
        self.decoded.append(tuple(x.detach().cpu() for x in res))
        self.pairs += pairs.shape[0]
        return res


def load_train_records(vrd_root: str) -> List[dict]:
    """The records of ``annotations_train.json`` (no images needed): the random models' prior."""
    return load_vrd_split(vrd_root, "train", "vrd_train (benchmark prior)")


def load_sample_records(vrd_root: str, image_dir: str, num_images: int) -> List[dict]:
    """The first ``num_images`` records of ``annotations_test.json`` (VRD loader) whose image is in
    ``image_dir`` and that have a relation between 2 or more boxes. ValueError if there are fewer."""
    recs = load_vrd_split(vrd_root, "test", "vrd_test (benchmark)", image_root=image_dir)
    recs = [r for r in recs if os.path.isfile(r["file_name"]) and len(r["relations"]) and len(r["annotations"]) >= 2]
    if len(recs) < num_images:
        raise ValueError(
            f"model_benchmark: {image_dir} holds {len(recs)} images of "
            f"{os.path.join(vrd_root, 'annotations_test.json')} with relations, expected "
            f">= {num_images} (--images)"
        )
    return recs[:num_images]


def same_relations(a, b, rtol: float = 1e-5) -> bool:
    """Whether two relation fields hold the same (pair, subject, predicate, object) rows with the
    same scores (log-scores within ``rtol``, at least 1e-4), whatever their order among ties."""
    if len(a) != len(b):
        return False

    def rows(r):
        key = torch.cat(
            [r.pair_indices, torch.stack([r.subject_classes, r.predicate_classes, r.object_classes], 1)], 1
        ).cpu()
        order = sorted(range(len(key)), key=lambda i: tuple(key[i].tolist()))
        return key[order], r.scores.cpu().double().clamp(min=1e-300).log()[order]

    (ka, sa), (kb, sb) = rows(a), rows(b)
    return bool(torch.equal(ka, kb) and torch.allclose(sa, sb, rtol=rtol, atol=1e-4))


def same_decoding(a: Sequence[Tuple[Tensor, Tensor]], b: Sequence[Tuple[Tensor, Tensor]], rtol: float = 1e-5) -> bool:
    """Whether two decoders' per-pair lists (``BenchRelationInference.decoded``) hold the same
    log-scores (within ``rtol`` relative, at least 1e-4 absolute: float32 rounding) and the same
    triplets, except where a score is within that tolerance of a neighbour in its list (a
    near-tie, whose order float rounding decides)."""
    if len(a) != len(b):
        return False
    for (va, ta), (vb, tb) in zip(a, b):
        if va.shape != vb.shape or not torch.allclose(va.double(), vb.double(), rtol=rtol, atol=1e-4):
            return False
        gap = (va[:, 1:] - va[:, :-1]).abs() <= 1e-4 + rtol * va[:, 1:].abs()
        tie = torch.zeros_like(va, dtype=torch.bool)
        tie[:, 1:] |= gap
        tie[:, :-1] |= gap
        if not torch.equal(ta[~tie], tb[~tie]):
            return False
    return True


def build_cfg(repo: str, config: str, opts: Sequence[str], device: str, sizes: Optional[Tuple[int, int]] = None):
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(os.path.join(repo, "configs", config))
    if sizes is not None:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.VRD.NUM_PREDICATES = sizes
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = ""  # random init
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()  # the prior's counts are set from the records
    cfg.MODEL.DEVICE = device
    return cfg


def _trained_model(config_file: str, weights: str, opts: Sequence[str], device: str):
    """(cfg, model) of a trained checkpoint in phrase_cls mode: its weights and its prior."""
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.VRD.MODE = "phrase_cls"
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()  # the prior comes with the weights
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    VRDCheckpointer(model, require_relation_head=True).load(weights)
    return cfg, model


def _build(cfg, records, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    s, p = cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.VRD.NUM_PREDICATES
    folded = [
        dict(
            r,
            annotations=[dict(a, category_id=a["category_id"] % s) for a in r["annotations"]],
            relations=r["relations"] % [10**9, 10**9, p],
        )
        for r in records
    ]
    model.roi_heads.set_triplet_counts(compute_triplet_counts(folded, s, p))
    return model


def _inputs(cfg, records, is_train: bool):
    """The mapped inputs (at test time with the gold instances, which predcls / phrase_cls read)."""
    mapper = VRDDatasetMapper(cfg, is_train=is_train)
    return [mapper(r) for r in records]


def _timed(fn, inputs, device, warmup: int, after_warmup=None):
    """(seconds per image, (peak bytes, growth over the start), outputs) over ``inputs``, one image
    per call, after ``warmup`` untimed calls (then ``after_warmup()``)."""
    for x in inputs[:warmup]:
        fn(x)
    if after_warmup is not None:
        after_warmup()
    outs, total = [], 0.0
    with PeakMemory(device) as mem:
        for x in inputs:
            sync(device)
            t = time.perf_counter()
            outs.append(fn(x))
            sync(device)
            total += time.perf_counter() - t
    return total / len(inputs), (mem.peak_bytes, mem.peak_bytes - mem.start_bytes), outs


def _train_row(name, cfg, records, stage, device, warmup, prior_records=None):
    model = _build(cfg, records if prior_records is None else prior_records)
    model.train()
    model.freeze_for_stage(stage)
    inputs = _inputs(cfg, records, is_train=True)

    def step(x):
        losses = model([x])
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    sec, peak, _ = _timed(step, inputs, device, warmup)
    return {"row": name, "decoder": "-", "seconds_per_image": sec, "peak_bytes": peak[0], "peak_growth_bytes": peak[1]}


def _inference_rows(name, cfg, records, device, warmup, peak_std=None, model=None, prior_records=None):
    """Two rows, ours then dense, on one model; the dense row carries ``agree`` and the ratios.
    The random model's prior counts the triplets of ``prior_records`` (default: ``records``)."""
    if model is None:
        model = _build(cfg, records if prior_records is None else prior_records)
    model.eval()
    inputs = _inputs(cfg, records, is_train=False)
    rows, outs, decoded = [], [], []
    for dense in (False, True):
        inf = BenchRelationInference(cfg, dense=dense, peak_std=peak_std)
        model.roi_heads.relation_inference = inf
        with torch.no_grad():
            sec, peak, out = _timed(
                lambda x: model([x])[0]["relations"], inputs, device, warmup, after_warmup=inf.reset
            )
        rows.append(
            {
                "row": name,
                "decoder": "dense" if dense else "ours",
                "seconds_per_image": sec,
                "scoring_seconds_per_image": inf.decode_seconds / len(inputs),
                "peak_bytes": peak[0],
                "peak_growth_bytes": peak[1],
                "pairs_per_image": inf.pairs / len(inputs),
                "relations_per_image": sum(len(o) for o in out) / len(out),
                "logit_scale": sum(inf.scales) / len(inf.scales) if inf.scales else 1.0,
                "logit_std": sum(inf.stds) / len(inf.stds) if inf.stds else float("nan"),
            }
        )
        outs.append(out)
        decoded.append(inf.decoded)
    ours, dense = rows
    dense["same_triplets"] = same_decoding(*decoded)  # every pair's top-K, up to near-ties
    dense["same_relations"] = sum(same_relations(a, b) for a, b in zip(*outs)) / len(inputs)
    dense["whole_image_ratio"] = dense["seconds_per_image"] / ours["seconds_per_image"]
    dense["scoring_ratio"] = dense["scoring_seconds_per_image"] / max(ours["scoring_seconds_per_image"], 1e-12)
    return rows, model


def run_benchmark(
    vrd_root: str,
    image_dir: str,
    num_images: int,
    *,
    device: str = "cpu",
    opts: Sequence[str] = (),
    warmup: int = 1,
    peak_std: float = 2.0,
    repo: str = ".",
    rows: Sequence[str] = (),
    trained: Optional[Tuple[str, str]] = None,
    prior: str = "train",
) -> Dict:
    """All rows (or those named in ``rows``) on ``num_images`` sample images; the figures as a dict
    (``rows`` list, ``relation_scoring_speedup_vg150`` [_peaked], ``inference_speedup``). With
    ``trained`` = (config file, weights): the row ``trained_phrase_cls``, that trained model's
    scoring ours vs dense on its own logits and prior (``relation_scoring_speedup_trained``).
    ``prior``: what the random models' prior counts, "train" (annotations_train.json, as a trained
    model's prior) or "images" (the benchmarked images' own triplets, nearly uniform)."""
    if prior not in PRIORS:
        raise ValueError(f"model_benchmark: prior must be one of {PRIORS}, found {prior!r}")
    records = load_sample_records(vrd_root, image_dir, num_images)
    pr = load_train_records(vrd_root) if prior == "train" else records
    want = set(rows) if rows else None
    out = []
    for name, config, stage in TRAIN_ROWS:
        if want is None or name in want:
            out.append(_train_row(name, build_cfg(repo, config, opts, device), records, stage, device, warmup, pr))
    for name, config in INFERENCE_ROWS:
        if want is None or name in want:
            out += _inference_rows(
                name, build_cfg(repo, config, opts, device), records, device, warmup, prior_records=pr
            )[0]
    res = {
        "device": device,
        "images": [r["image_name"] for r in records],
        "warmup": warmup,
        "weights": "random init (seed 0); prior = triplet counts of "
        + ("annotations_train.json" if prior == "train" else "these images"),
        "prior": prior,
        "peak_std": peak_std,
    }
    if want is None or "vg150_scoring" in want:
        cfg = build_cfg(repo, VG150_CONFIG, opts, device, sizes=VG150_SIZE)
        flat, model = _inference_rows("vg150_scoring", cfg, records, device, warmup, prior_records=pr)
        peaked, _ = _inference_rows("vg150_scoring_peaked", cfg, records, device, warmup, peak_std, model)
        out += flat + peaked
        res["relation_scoring_speedup_vg150"] = flat[1]["scoring_ratio"]
        res["relation_scoring_speedup_vg150_peaked"] = peaked[1]["scoring_ratio"]
    if trained is not None:
        cfg, model = _trained_model(trained[0], trained[1], opts, device)
        rows_t, _ = _inference_rows("trained_phrase_cls", cfg, records, device, warmup, model=model)
        out += rows_t
        res["trained"] = {"config": trained[0], "weights": trained[1]}
        res["relation_scoring_speedup_trained"] = rows_t[1]["scoring_ratio"]
    res["inference_speedup"] = {r["row"]: r["whole_image_ratio"] for r in out if "whole_image_ratio" in r}
    res["rows"] = out
    return res


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(res: Dict) -> str:
    """The rows as a markdown table (peak: absolute, and its growth over the row's start; CP
    log-factor std: the mean standard deviation over classes of the decoded log-factors)."""
    lines = [
        "| row | decoder | pairs / image | s / image | scoring s / image | peak MiB (+ growth) | "
        "dense / ours (image) | dense / ours (scoring) | same top-K per pair | images with identical output | "
        "CP log-factor std |",
        "|" + "---|" * 11,
    ]
    for r in res["rows"]:
        mib = f"{r['peak_bytes'] / 2 ** 20:.0f} (+{r['peak_growth_bytes'] / 2 ** 20:.0f})"
        lines.append(
            f"| {r['row']} | {r['decoder']} | {_fmt(r.get('pairs_per_image'), '.0f')} | "
            f"{r['seconds_per_image']:.3f} | {_fmt(r.get('scoring_seconds_per_image'), '.4f')} | {mib} | "
            f"{_fmt(r.get('whole_image_ratio'), '.2f')} | {_fmt(r.get('scoring_ratio'), '.1f')} | "
            f"{_fmt(r.get('same_triplets'), '')} | {_fmt(r.get('same_relations'), '.0%')} | "
            f"{_fmt(r.get('logit_std'), '.3f')} |"
        )
    return "\n".join(lines)
