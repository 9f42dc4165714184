"""Feature benchmark: throughput and peak memory of image embeddings and offline captions on this machine's CPU,
and what a re-run costs after the catalog grows by 2% (goal: at most 5% of the full run's time).

Data: the `sample` store (version 1 = 1,200 items with rendered images; version 2 adds 24 items = 2%), generated
under benchmarks/.work/ if missing. Each measurement runs in its own process (a fresh process per run, as a Dagster
step is), so its peak RSS is its own and model loading is part of the time.

    .venv/bin/python benchmarks/features.py [--items 1200] [--workers 1] [--batch-size 64] [--dtypes float32,auto]

`auto` is the pipeline's default: bfloat16 on a CPU with native bf16 (AVX512-BF16/AMX), else float32.

Prints a table and writes benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "features"
RESULTS = HERE / "results" / "features.json"
STAGES = ("image_embeddings", "captions_offline")
sys.path.insert(0, str(HERE.parent))  # run from a checkout without an installed package too


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
    from mmrec_pipeline.features.sources import ModelSources

    base, grown = catalogs(n_items)
    items = base if catalog == "base" else grown
    compute = Compute(device="cpu", batch_size=batch_size, num_workers=workers, dtype=dtype)
    t0 = time.perf_counter()
    if stage == "image_embeddings":
        _, stats = image_embeddings(items, ModelSources(), compute, cache, models=("efficientnet_lite0",))
        stats = stats["efficientnet_lite0"]
    else:
        _, stats = captions(items, ModelSources(), compute, cache, models=("offline",))
        stats = stats["offline"]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"stage": stage, "dtype": str(compute.inference_dtype).removeprefix("torch."), "catalog": catalog,
            "items": items.height, "computed": stats["computed"],
            "reused": stats["reused"], "seconds": round(seconds, 2),
            "items_per_second": round(stats["computed"] / seconds, 2) if stats["computed"] else None,
            "peak_rss_mb": round(peak, 1)}


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
    ap.add_argument("--child", nargs=7, metavar=("STAGE", "CATALOG", "ITEMS", "CACHE", "WORKERS", "BATCH", "DTYPE"))
    args = ap.parse_args()
    if args.child:
        stage, catalog, items, cache, workers, batch, dtype = args.child
        print(json.dumps(child(stage, catalog, int(items), Path(cache), int(workers), int(batch), dtype)))
        return

    catalogs(args.items)  # generates the sample once, outside the timed runs
    import torch

    env = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "torch": torch.__version__, "machine": platform.machine(), "device": "cpu",
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    rows = []
    for stage in STAGES:
        for dtype in args.dtypes.split(","):
            cache = WORK / f"cache-{stage}-{dtype}"
            shutil.rmtree(cache, ignore_errors=True)
            run = [args.items, cache, args.workers, args.batch_size, dtype]
            full = run_child(stage, "base", *run)
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
    env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"{'stage':<18} {'dtype':<9} {'items':>6} {'full s':>8} {'items/s':>8} {'peak MB':>8} {'rerun s':>8} "
          f"{'+2% new':>8} {'+2% s':>7} {'ratio':>7}")
    for r in rows:
        f, a, g = r["full"], r["rerun_unchanged"], r["rerun_after_2pct_growth"]
        print(f"{r['stage']:<18} {r['dtype']:<9} {f['items']:>6} {f['seconds']:>8.1f} {f['items_per_second'] or 0:>8.1f} "
              f"{f['peak_rss_mb']:>8.0f} {a['seconds']:>8.2f} {g['computed']:>8} {g['seconds']:>7.2f} "
              f"{r['growth_cost_ratio']:>7.3f}")
    print(f"goal: ratio <= 0.05; machine: {env}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from mmrec_pipeline.storage import write_json

    write_json({"environment": env, "settings": {"items": args.items, "workers": args.workers,
                                                  "batch_size": args.batch_size, "dtypes": args.dtypes},
                "results": rows}, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
