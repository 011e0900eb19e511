#!/usr/bin/env python3
"""Times flash-linear-attention's GDN-2 kernels at gdr2-bench's CUDA shapes, for a side-by-side comparison
measured in the same device run as `gdr2-bench --filter cuda/` (scripts/gpu-check.sh calls this when a copy of
flash-linear-attention is present; docs/performance.md).

    PYTHONPATH=/path/to/flash-linear-attention python3 bench/fla_compare.py [--json FILE]

Same inputs as bench/bench_cuda.cu: bf16 q, k, v, b, w (q, k unit-scale rows), fp32 g in [-5, -0.1], fp32
initial state, final state written. Median of CUDA-event timings after warm-up. Needs torch, triton and fla
(which imports einops and transformers). flash-linear-attention is not part of gdr2: it is only measured here.
"""
import argparse
import json
import statistics
import sys


def median_ms(torch, fn, repeats=50, budget_ms=2000.0):
    fn()
    fn()
    torch.cuda.synchronize()
    times, total = [], 0.0
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        t = start.elapsed_time(stop)
        times.append(t)
        total += t
        if len(times) >= 3 and total > budget_ms:
            break
    return statistics.median(times)


def inputs(torch, B, T, H, K, V, requires_grad=False):
    gen = torch.Generator(device="cuda").manual_seed(B * 1000003 + T)
    def rnd(*shape, lo=0.0, hi=1.0, dtype=torch.bfloat16):
        x = torch.rand(*shape, generator=gen, device="cuda", dtype=torch.float32) * (hi - lo) + lo
        return x.to(dtype).requires_grad_(requires_grad)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, device="cuda"), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, device="cuda"), dim=-1)
    q = q.to(torch.bfloat16).requires_grad_(requires_grad)
    k = k.to(torch.bfloat16).requires_grad_(requires_grad)
    v = rnd(B, T, H, V, lo=-1.0, hi=1.0)
    g = rnd(B, T, H, K, lo=-5.0, hi=-0.1, dtype=torch.float32)
    b = rnd(B, T, H, K)
    w = rnd(B, T, H, V)
    h0 = rnd(B, H, K, V, lo=-1.0, hi=1.0, dtype=torch.float32)
    return q, k, v, g, b, w, h0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()
    import torch
    from fla.ops.gdn2 import chunk_gdn2, fused_recurrent_gdn2

    H, K, V = 16, 128, 128
    rows = []
    for B, T in [(4, 4096), (1, 16384), (8, 2048)]:
        q, k, v, g, b, w, h0 = inputs(torch, B, T, H, K, V)
        with torch.no_grad():
            ms = median_ms(torch, lambda: chunk_gdn2(q, k, v, g, b, w, initial_state=h0, output_final_state=True))
        rows.append({"name": "fla/chunk_gdn2/forward", "B": B, "T": T, "ms": ms})
        q, k, v, g, b, w, h0 = inputs(torch, B, T, H, K, V, requires_grad=True)
        def fwd_bwd():
            o, ht = chunk_gdn2(q, k, v, g, b, w, initial_state=h0, output_final_state=True)
            torch.autograd.backward((o, ht), (torch.ones_like(o), torch.ones_like(ht)))
        ms = median_ms(torch, fwd_bwd)
        rows.append({"name": "fla/chunk_gdn2/forward+backward", "B": B, "T": T, "ms": ms})
        del q, k, v, g, b, w, h0
        torch.cuda.empty_cache()
    for N in [1, 256]:
        q, k, v, g, b, w, h0 = inputs(torch, N, 1, H, K, V)
        with torch.no_grad():
            ms = median_ms(torch, lambda: fused_recurrent_gdn2(q, k, v, g, b, w, initial_state=h0,
                                                               output_final_state=True), repeats=200)
        state_bytes = 2 * N * H * K * V * 4
        rows.append({"name": "fla/fused_recurrent_gdn2/decode", "B": N, "T": 1, "ms": ms,
                     "state_GBps": state_bytes / ms / 1e6})
    print("%-36s %4s %6s %10s" % ("fla benchmark", "B", "T", "median ms"))
    for r in rows:
        extra = ("  state %.0f GB/s" % r["state_GBps"]) if "state_GBps" in r else ""
        print("%-36s %4d %6d %10.3f%s" % (r["name"], r["B"], r["T"], r["ms"], extra))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
