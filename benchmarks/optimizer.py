"""Benchmark the `Trainer`'s AdamW update on CPU: torch's default per-tensor loop against the fused kernel
(`training.fusable`), for BPR-MF's embeddings at H&M's sizes (`hm-synthetic` scales: users and items after the
5-core split), one BPR step of 16,384 triples each time.

    python benchmarks/optimizer.py [--scales 0.1 1.0] [--steps 6] [--threads 1]

Prints and saves, per scale and kernel, the mean seconds of `optimizer.step()` (the first step not counted: it
allocates the moments) and the largest difference between the two kernels' parameters after the same steps, to
`benchmarks/results/optimizer.json`, with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_info

RESULTS = ROOT / "benchmarks" / "results" / "optimizer.json"
# Users and items BPR-MF trains at each scale (benchmarks/results/scale.json); its dimension and step size.
SIZES = {0.1: (98_603, 10_554), 1.0: (986_047, 105_542)}
DIM, TRIPLES = 64, 16_384


def run(users: int, items: int, fused: bool, steps: int) -> tuple[float, list]:
    import torch

    torch.manual_seed(0)
    user_emb, item_emb = torch.nn.Embedding(users, DIM), torch.nn.Embedding(items, DIM)
    params = [user_emb.weight, item_emb.weight]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=fused)
    gen, seconds = torch.Generator().manual_seed(0), []
    for _ in range(steps):
        u = torch.randint(0, users, (TRIPLES,), generator=gen)
        i, j = torch.randint(0, items, (2, TRIPLES), generator=gen)
        diff = (user_emb(u) * (item_emb(i) - item_emb(j))).sum(1)
        loss = -torch.nn.functional.logsigmoid(diff).mean()
        opt.zero_grad()
        loss.backward()
        start = time.perf_counter()
        opt.step()
        seconds.append(time.perf_counter() - start)
    return sum(seconds[1:]) / (steps - 1), [p.detach().clone() for p in params]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.1, 1.0], choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"machine": machine_info(), "what": f"AdamW step on BPR-MF embeddings ({DIM}-d, {TRIPLES:,} triples a "
              f"step), mean of {args.steps - 1} steps after the first, {args.threads} torch thread(s)", "rows": []}
    for scale in args.scales:
        users, items = SIZES[scale]
        loop_s, loop_params = run(users, items, False, args.steps)
        fused_s, fused_params = run(users, items, True, args.steps)
        max_diff = max(float((a - b).abs().max()) for a, b in zip(loop_params, fused_params, strict=True))
        row = {"scale": scale, "users": users, "items": items, "loop_step_s": round(loop_s, 4),
               "fused_step_s": round(fused_s, 4), "speedup": round(loop_s / fused_s, 1),
               "max_param_difference": max_diff}
        report["rows"].append(row)
        print(f"scale {scale}: {users:,} users x {items:,} items  loop {loop_s * 1000:6.0f} ms  fused "
              f"{fused_s * 1000:5.0f} ms  ({row['speedup']}x)  max |param difference| {max_diff:.2e}")
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"saved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
