"""The CP triplet distribution against dense S x P x O computation: loss + backward, exact top-100
decoding and the dense fallback, timed on synthetic factors (``tools/benchmark_cp.py`` says what
each part measures and how dense timings are scaled to N)."""

import json
import math
import time

import torch

from vrd_d2.modeling.cp_triplet import TripletPrior, cp_nll_loss, dense_log_prob
from vrd_d2.modeling.decode import DecodeStats, dense_topk_triplets, topk_triplets_per_pair
from vrd_d2.modeling.decode.common import pair_chunks
from vrd_d2.modeling.decode.dense import linear_dense_tensor
from vrd_d2.utils.safe_write import atomic_write_text, check_output_path

SIZES = {"vrd": (100, 70, 100), "vg150": (151, 51, 151)}
VG200 = (200, 100, 200)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    best, out = math.inf, None
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def make_factors(n, r, sizes, kind, gen, device):
    """'random': N(0, 1) logits. 'flat': N(0, 0.1^2) logits, so flat that no bound can certify
    (exercises the dense fallback). 'peaked': like a trained net, N(0, 1) plus 2 large logits
    (about +10) per factor and rank."""
    out = []
    for c in sizes:
        x = torch.randn(n, r, c, generator=gen) * (0.1 if kind == "flat" else 1.0)
        if kind == "peaked":
            idx = torch.rand(n, r, c, generator=gen).argsort(-1)[..., :2]
            x.scatter_(2, idx, 10.0 + torch.rand(n, r, 2, generator=gen))
        out.append(x.to(device))
    return out


def make_prior(sizes, gen, density=0.01):
    """Synthetic training counts: ~1% of triplets seen, heavy-tailed counts (1 .. ~1000)."""
    seen = torch.rand(*sizes, generator=gen) < density
    counts = torch.exp(torch.rand(*sizes, generator=gen) * 7).floor().long() * seen
    return TripletPrior.from_counts(counts)


def dense_loss_backward(f, trip, pair, chunk):
    """Dense reference loss + backward, chunked over pairs (gradients accumulate)."""
    f = [x.detach().clone().requires_grad_() for x in f]
    n = f[0].shape[0]
    total = 0.0
    for a in range(0, n, chunk):
        sel = (pair >= a) & (pair < a + chunk)
        lp = dense_log_prob(*[x[a : a + chunk] for x in f])
        t, p = trip[sel], pair[sel] - a
        loss = -lp[p, t[:, 0], t[:, 1], t[:, 2]].sum() / n
        loss.backward()
        total += float(loss.detach())
    return total


def cp_loss_backward(f, trip, pair):
    f = [x.detach().clone().requires_grad_() for x in f]
    loss = cp_nll_loss(*f, trip, pair, reduction="sum") / f[0].shape[0]
    loss.backward()
    return float(loss.detach())


def bench_loss(args, device, gen, rows, results):
    for name, sizes in SIZES.items():
        if name not in args.loss_sizes:
            continue
        for r in args.loss_ranks:
            for n in args.loss_pairs:
                f = make_factors(n, r, sizes, "random", gen, device)
                f = [x * 3 for x in f]
                # one annotated triplet per pair, plus a second one on every 4th pair (multimodal)
                m = n + n // 4
                trip = torch.stack([torch.randint(c, (m,), generator=gen) for c in sizes], 1).to(device)
                pair = torch.cat([torch.arange(n), torch.arange(0, n, 4)]).to(device)
                t_cp, v_cp = timed(lambda: cp_loss_backward(f, trip, pair), device, repeat=5)
                nd = min(n, args.dense_pairs)
                sel = pair < nd
                fd = [x[:nd] for x in f]
                t_dense, v_dense = timed(lambda: dense_loss_backward(fd, trip[sel], pair[sel], args.chunk), device)
                v_cp_sub = cp_loss_backward(fd, trip[sel], pair[sel])
                rel = abs(v_cp_sub - v_dense) / max(1e-12, abs(v_dense))
                t_dense_n = t_dense * n / nd
                rows.append(
                    (
                        "loss+bwd",
                        name,
                        r,
                        n,
                        "-",
                        f"{t_cp * 1e3:.2f}",
                        f"{t_dense_n * 1e3:.1f}",
                        nd,
                        f"{t_dense_n / t_cp:.0f}x",
                        f"rel {rel:.1e}",
                    )
                )
                results["loss"].append(
                    dict(
                        sizes=name,
                        R=r,
                        pairs=n,
                        cp_s=t_cp,
                        dense_s=t_dense_n,
                        dense_pairs_measured=nd,
                        speedup=t_dense_n / t_cp,
                        rel_diff=rel,
                    )
                )
                if name == "vg150" and r == 5 and n == 256:
                    results["loss_speedup_vg150"] = t_dense_n / t_cp
                    results["loss_rel_diff_vg150"] = rel


def same_as_dense(v, t, rv, rt, rtol):
    """Scores equal (to rtol) and, where a score is not tied with a neighbour, the same triplet."""
    if v.shape != rv.shape or not torch.allclose(v, rv, rtol=rtol, atol=rtol):
        return False
    gap = torch.full_like(v, math.inf)
    d = (v[:, 1:] - v[:, :-1]).abs()
    gap[:, 1:] = torch.minimum(gap[:, 1:], d)
    gap[:, :-1] = torch.minimum(gap[:, :-1], d)
    distinct = gap > rtol * (1 + v.abs())
    return bool((t == rt).all(-1)[distinct].all())


def decode_row(label, sizes, kind, prior, r, n, nd, device, gen, rows, repeat=9):
    """Time our exact top-100 and dense on the same logits; append a table row and a record.
    Best of ``repeat`` runs (of 2 for dense): on a shared machine the minimum filters out
    preemption."""
    f = make_factors(n, r, sizes, kind, gen, device)
    paths = DecodeStats()
    t_fast, (v, t) = timed(lambda: topk_triplets_per_pair(*f, 100, prior=prior, stats=paths), device, repeat=repeat)
    stats = paths.as_dict()
    nd = min(n, nd)
    t_dense, (rv, rt) = timed(lambda: dense_topk_triplets(*[x[:nd] for x in f], 100, prior=prior), device, repeat=2)
    t_dense_n = t_dense * n / nd
    ok = same_as_dense(v[:nd], t[:nd], rv, rt, 1e-4)
    rows.append(
        (
            "top100",
            label,
            r,
            n,
            f"b{stats['bound']}/l{stats['linear']}/g{stats['log']}",
            f"{t_fast * 1e3:.1f}",
            f"{t_dense_n * 1e3:.1f}",
            nd,
            f"{t_dense_n / t_fast:.1f}x",
            "exact" if ok else "MISMATCH",
        )
    )
    record = dict(
        kind=kind,
        prior=prior is not None,
        R=r,
        pairs=n,
        fast_s=t_fast,
        dense_s=t_dense_n,
        dense_pairs_measured=nd,
        speedup=t_dense_n / t_fast,
        exact=ok,
        paths=stats,
    )
    return f, record


def bench_decode(args, device, gen, rows, results):
    sizes = SIZES["vg150"]
    prior = make_prior(sizes, gen).to(device)
    exact = True
    for kind in ("peaked", "random", "flat"):
        for use_prior in (True, False):
            for r in args.decode_ranks:
                label = f"{kind}{'+prior' if use_prior else ''}"
                _, record = decode_row(
                    label,
                    sizes,
                    kind,
                    prior if use_prior else None,
                    r,
                    args.decode_pairs,
                    args.dense_pairs_decode,
                    device,
                    gen,
                    rows,
                )
                results["decode"].append(record)
                exact &= record["exact"]
    for key, kinds in (("peaked", ("peaked",)), ("random", ("random", "flat"))):
        sp = [d["speedup"] for d in results["decode"] if d["kind"] in kinds]
        results[f"decode_speedup_{key}"] = min(sp)  # the worst configuration of that kind
    # VRD size, trained-like logits: the common case of a VRD image
    sizes = SIZES["vrd"]
    prior = make_prior(sizes, gen).to(device)
    results["decode_vrd"] = []
    for use_prior in (True, False):
        for r in args.decode_ranks:
            label = f"vrd peaked{'+prior' if use_prior else ''}"
            _, record = decode_row(
                label,
                sizes,
                "peaked",
                prior if use_prior else None,
                r,
                args.vrd_pairs,
                args.dense_pairs_decode,
                device,
                gen,
                rows,
            )
            results["decode_vrd"].append(record)
            exact &= record["exact"]
            if use_prior and r == 5:
                results["decode_speedup_peaked_prior_vrd_r5"] = record["speedup"]
    results["decode_exact"] = exact


def build_dense_tensors(f, dtype):
    """The baseline: the S x P x O tensors of every pair, one batched matmul per chunk."""
    total = f[0].shape[2] * f[1].shape[2] * f[2].shape[2]
    for a, b in pair_chunks(f[0].shape[0], total):
        linear_dense_tensor(*[x[a:b] for x in f], dtype)


def bench_fallback(args, device, gen, rows, results):
    """Flat logits, no prior, VG200 size, R = 5: every pair takes the dense fallback."""
    n = args.vg200_pairs
    f, record = decode_row(
        "vg200 flat",
        VG200,
        "flat",
        None,
        5,
        n,
        args.dense_pairs_vg200,
        device,
        gen,
        rows,
        repeat=2,
    )
    t_gemm, _ = timed(lambda: build_dense_tensors(f, torch.float32), device, repeat=2)
    t_gemm64, _ = timed(lambda: build_dense_tensors(f, torch.float64), device, repeat=1)
    record.update(gemm_float32_s=t_gemm, gemm_float64_s=t_gemm64)
    results["fallback_vg200_flat"] = record
    results["fallback_vs_gemm_vg200_flat"] = record["fast_s"] / t_gemm
    results["fallback_vs_gemm64_vg200_flat"] = record["fast_s"] / t_gemm64
    results["fallback_vs_dense_vg200_flat"] = record["dense_s"] / record["fast_s"]
    results["decode_exact"] = results.get("decode_exact", True) and record["exact"]
    for label, t in (("gemm float32", t_gemm), ("gemm float64", t_gemm64)):
        ratio = f"decode/gemm {record['fast_s'] / t:.2f}"
        rows.append(("bmm", f"vg200 {label}", 5, n, "-", f"{t * 1e3:.1f}", "-", "-", "-", ratio))


def resolve_settings(args):
    """Fill ``args`` (the tool's parsed arguments) with the sizes of each part: pairs, dense
    pairs, chunk and ranks, from ``--quick`` / ``--full`` and the explicit overrides."""
    if args.quick:
        args.loss_pairs, args.dense_pairs, args.chunk = [256], 4, 2
        args.decode_pairs, args.dense_pairs_decode, args.decode_ranks = 32, 8, [5]
    else:
        args.loss_pairs, args.dense_pairs, args.chunk = [256, 1024, 4096], 32, 4
        args.decode_pairs, args.dense_pairs_decode, args.decode_ranks = 256, 32, [1, 5, 10]
    if args.vg200_pairs is None:
        args.vg200_pairs = 16 if args.quick else 1000
    args.dense_pairs_vg200 = 2
    if args.decode_ranks_override is not None:
        args.decode_ranks = args.decode_ranks_override
    if args.full:
        args.dense_pairs, args.dense_pairs_decode = 1 << 30, 1 << 30
    if args.dense_pairs_override is not None:
        args.dense_pairs = args.dense_pairs_override
    return args


def run_benchmark(args, device: torch.device):
    """All three parts on ``device``; returns ``(results, rows)``: the JSON record and the table rows."""
    gen = torch.Generator().manual_seed(args.seed)
    results = {"device": str(device), "threads": torch.get_num_threads(), "loss": [], "decode": []}
    rows = []
    t0 = time.perf_counter()
    bench_loss(args, device, gen, rows, results)
    bench_decode(args, device, gen, rows, results)
    bench_fallback(args, device, gen, rows, results)
    results["total_s"] = time.perf_counter() - t0
    return results, rows


def print_report(results, rows, device: torch.device) -> None:
    """The table of ``rows`` and the headline numbers of ``results``, on stdout."""
    head = (
        "task",
        "setting",
        "R",
        "N",
        "paths",
        "CP/fast ms",
        "dense ms",
        "dense N",
        "speedup",
        "check",
    )
    table = [head] + [tuple(str(x) for x in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print(
        f"device={device} threads={torch.get_num_threads()}  (dense ms scaled to N when 'dense N' < N;"
        " paths = pairs decoded by bound / linear-dense / log-dense)"
    )
    for row in table:
        print("  ".join(x.rjust(w) for x, w in zip(row, widths)))
    print(
        f"loss_speedup_vg150={results.get('loss_speedup_vg150', float('nan')):.0f}x  "
        f"decode_speedup_peaked={results['decode_speedup_peaked']:.1f}x  "
        f"decode_speedup_random={results['decode_speedup_random']:.2f}x  "
        f"decode_speedup_peaked_prior_vrd_r5="
        f"{results.get('decode_speedup_peaked_prior_vrd_r5', float('nan')):.1f}x  "
        f"fallback_vs_gemm_vg200_flat={results['fallback_vs_gemm_vg200_flat']:.2f}  "
        f"decode_exact={results['decode_exact']}  total {results['total_s']:.1f}s"
    )


def run_and_report(args) -> None:
    """Run the benchmark of the tool's parsed ``args``, print it, and write ``--json``."""
    device = torch.device(args.device)
    results, rows = run_benchmark(resolve_settings(args), device)
    print_report(results, rows, device)
    if args.json:
        check_output_path(args.json, (), getattr(args, "overwrite", False), flag="--json")
        atomic_write_text(args.json, json.dumps(results, indent=2))
