"""Feature benchmark: throughput and peak memory of image embeddings and offline captions on this machine's CPU,
and what a re-run costs after the catalog grows by 2% (goal: at most 5% of the full run's time). Stage `both` runs
image embeddings and then offline captions in one process on one cache, as the demo does: the captioner reuses the
EfficientNet-Lite0 features the embeddings stored (one CNN pass per image for both features).

Data: the `sample` store (version 1 = 1,200 items with rendered images; version 2 adds 24 items = 2%), generated
under benchmarks/.work/ if missing. Each measurement runs in its own process (a fresh process per run, as a Dagster
step is), so its peak RSS is its own and model loading is part of the time.

    .venv/bin/python benchmarks/features.py [--items 1200] [--workers 1] [--batch-size 64] [--dtypes float32,auto]
        [--stages image_embeddings,captions_offline,both] [--full-only] [--label before --results PATH]

`auto` is the pipeline's default: bfloat16 on a CPU with native bf16 (AVX512-BF16/AMX), else float32.

Each run reports wall time and CPU time (user + sys of the process and its DataLoader workers): on a shared
machine CPU time is the number to compare. Prints a table and writes benchmarks/results/features.json, or with
`--label` merges the rows under that label into `--results` (before/after comparisons of one change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "features"
RESULTS = HERE / "results" / "features.json"
STAGES = ("image_embeddings", "captions_offline", "both")
sys.path.insert(0, str(HERE.parent))  # run from a checkout without an installed package too

from machine import machine_info


def catalogs(n_items: int):
    """(base catalog of n_items from sample v1, grown catalog = base + 2% new items from sample v2)."""
    import polars as pl

    from mmrec_pipeline.data.synthetic import read

    v1 = read(WORK / "sample", {"version": 1}).items.sort("item_id")
    v2 = read(WORK / "sample", {"version": 2}).items.sort("item_id")
    base = v1.head(n_items)
    new = v2.filter(~pl.col("item_id").is_in(v1["item_id"].implode()))
    grown = pl.concat([v2.filter(pl.col("item_id").is_in(base["item_id"].implode())),
                       new.head(max(1, round(0.02 * n_items)))])
    return base, grown


def child(stage: str, catalog: str, n_items: int, cache: Path, workers: int, batch_size: int, dtype: str) -> dict:
    """One measured run, in this (child) process."""
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.features.captions import captions
    from mmrec_pipeline.features.image import image_embeddings
    from mmrec_pipeline.weights import ModelSources

    base, grown = catalogs(n_items)
    items = base if catalog == "base" else grown
    compute = Compute(device="cpu", batch_size=batch_size, num_workers=workers, dtype=dtype)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    if stage in ("image_embeddings", "both"):
        _, stats = image_embeddings(items, ModelSources(), compute, cache, models=("efficientnet_lite0",))
        stats = stats["efficientnet_lite0"]
    if stage in ("captions_offline", "both"):
        _, caption_stats = captions(items, ModelSources(), compute, cache, models=("offline",))
        stats = caption_stats["offline"] if stage == "captions_offline" else stats
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"stage": stage, "dtype": str(compute.inference_dtype).removeprefix("torch."), "catalog": catalog,
            "items": items.height, "computed": stats["computed"],
            "reused": stats["reused"], "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "items_per_second": round(stats["computed"] / seconds, 2) if stats["computed"] else None,
            "items_per_cpu_second": round(stats["computed"] / cpu, 2) if stats["computed"] else None,
            "peak_rss_mb": round(peak, 1)}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], check=True, capture_output=True,
                         text=True, cwd=HERE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers decoding images")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtypes", default="float32,auto", help="Compute dtypes to measure, comma-separated")
    ap.add_argument("--stages", default=",".join(STAGES), help="Stages to measure, comma-separated")
    ap.add_argument("--full-only", action="store_true", help="Only the full run (no re-runs, no +2%% growth)")
    ap.add_argument("--label", help="Merge the rows under this label into --results instead of overwriting")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=7, metavar=("STAGE", "CATALOG", "ITEMS", "CACHE", "WORKERS", "BATCH", "DTYPE"))
    args = ap.parse_args()
    if args.child:
        stage, catalog, items, cache, workers, batch, dtype = args.child
        print(json.dumps(child(stage, catalog, int(items), Path(cache), int(workers), int(batch), dtype)))
        return

    catalogs(args.items)  # generates the sample once, outside the timed runs
    env = machine_info()
    rows = []
    for stage in args.stages.split(","):
        for dtype in args.dtypes.split(","):
            cache = WORK / f"cache-{stage}-{dtype}"
            shutil.rmtree(cache, ignore_errors=True)
            run = [args.items, cache, args.workers, args.batch_size, dtype]
            full = run_child(stage, "base", *run)
            if args.full_only:
                rows.append({"stage": stage, "dtype": full["dtype"], "full": full})
                continue
            again = run_child(stage, "base", *run)
            # The +2% run lasts about a second, so process noise matters: median of 3, each from a copy of the
            # base cache.
            grows = []
            for rep in range(3):
                copy = WORK / f"cache-{stage}-{dtype}-grown{rep}"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(cache, copy)
                grows.append(run_child(stage, "grown", args.items, copy, args.workers, args.batch_size, dtype))
                shutil.rmtree(copy)
            grow = sorted(grows, key=lambda g: g["seconds"])[1]
            grow["seconds_all"] = [g["seconds"] for g in grows]
            rows.append({"stage": stage, "dtype": full["dtype"], "full": full, "rerun_unchanged": again,
                         "rerun_after_2pct_growth": grow,
                         "growth_cost_ratio": round(grow["seconds"] / full["seconds"], 4)})
    env["load_average_1m_5m_15m_at_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"{'stage':<18} {'dtype':<9} {'items':>6} {'full s':>8} {'cpu s':>8} {'items/s':>8} {'items/cpu s':>11} "
          f"{'peak MB':>8} {'rerun s':>8} {'+2% new':>8} {'+2% s':>7} {'ratio':>7}")
    for r in rows:
        f = r["full"]
        line = (f"{r['stage']:<18} {r['dtype']:<9} {f['items']:>6} {f['seconds']:>8.1f} {f['cpu_seconds']:>8.1f} "
                f"{f['items_per_second'] or 0:>8.1f} {f['items_per_cpu_second'] or 0:>11.2f} {f['peak_rss_mb']:>8.0f}")
        if "rerun_unchanged" in r:
            a, g = r["rerun_unchanged"], r["rerun_after_2pct_growth"]
            line += f" {a['seconds']:>8.2f} {g['computed']:>8} {g['seconds']:>7.2f} {r['growth_cost_ratio']:>7.3f}"
        print(line)
    print(f"goal: ratio <= 0.05; machine: {env}")
    from mmrec_pipeline.storage import write_json

    result = {"environment": env, "settings": {"items": args.items, "workers": args.workers,
                                               "batch_size": args.batch_size, "dtypes": args.dtypes,
                                               "stages": args.stages, "full_only": args.full_only},
              "results": rows}
    if args.label:
        merged = json.loads(args.results.read_text()) if args.results.exists() else {}
        merged[args.label] = result
        result = merged
    write_json(result, args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
