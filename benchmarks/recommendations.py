"""Benchmark the serving step on `hm`: champion on validation, retrain on all interactions, top-K writing.

    python benchmarks/recommendations.py [--dataset hm] [--k 50] [--batches 64,256,1024] [--threads 1]

1. The dataset is read and split as the pipeline does (registry entry, k-core, split); popularity, item_knn and
   EASE are trained and evaluated (test + `@valid` rows) as their assets do.
2. The champion is the best on validation NDCG@10 (`serving.validation_ranking`), retrained on every interaction.
3. Every user (active window 0 = all, to measure the most work) is scored and written, once per batch size, each
   in a fresh subprocess (the retrained model loaded from safetensors) so its peak RSS (`resource.getrusage`) is
   its own; the peak is reset (/proc/self/clear_refs) once the model and data are loaded, so
   `scoring_peak_over_loaded_mb` is what scoring and writing add: what the batch size bounds. Torch uses `--threads` threads (default 1: the machine is shared).

Results: `benchmarks/results/recommendations.json` (with the CPU model, flags and load of the machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info

CANDIDATES = ("popularity", "item_knn", "ease")


def prepare(dataset: str, work: Path) -> dict:
    """Train the candidates, choose the champion on validation; tables and checkpoints go to `work`."""
    import polars as pl

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.ingest import load_dataset
    from mmrec_pipeline.data.splits import filter_and_split
    from mmrec_pipeline.models import CLASSIC
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.runner import train_variants
    from mmrec_pipeline.registry import get_dataset
    from mmrec_pipeline.serving import choose_champion, validation_ranking
    from mmrec_pipeline.storage import Lake, write_parquet

    spec = get_dataset(dataset)
    tables = load_dataset(spec, Lake())
    split, _ = filter_and_split(tables.interactions, spec.split, spec.min_user_interactions, spec.name)
    data = RecDataset.from_tables(spec.name, split, tables.items, spec.split, spec.repeats_relevant)
    runs = []
    for name in CANDIDATES:
        cls = CLASSIC[name]
        runs += train_variants(name, cls, cls.variants, data, ItemFeatures(), Compute(device="cpu"),
                               work / "models" / name)[0]
    ranking = validation_ranking(pl.concat([r.metrics for r in runs]), spec.split)
    best = choose_champion(ranking)
    write_parquet(split, work / "split.parquet")
    write_parquet(tables.items, work / "items.parquet")
    return {"champion": best, "ranking": ranking.to_dicts(), "users": data.n_users, "items": data.n_items,
            "interactions": split.height}


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM), so the next reading covers only what follows (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(dataset: str, work: Path, model: str, variant: str, k: int, batch: int, threads: int) -> dict:
    """batch 0: retrain the champion on all interactions and save it; else: load it and write every user's top-K."""
    import polars as pl
    import torch

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.models import CLASSIC
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.registry import get_dataset
    from mmrec_pipeline.serving import active_users, all_interactions, retrain_config, write_top_k

    torch.set_num_threads(threads)
    spec, cls = get_dataset(dataset), CLASSIC[model]
    split, items = pl.read_parquet(work / "split.parquet"), pl.read_parquet(work / "items.parquet")
    data = all_interactions(split, spec.name, items, spec.split, spec.repeats_relevant)
    rss_start = _rss_mb()
    start = time.perf_counter()
    if batch == 0:
        config, fixed = retrain_config(cls, work / "models" / model / variant)
        trained = cls(config)
        trained.fit(data, ItemFeatures(), Compute(device="cpu"))
        trained.save(work / "retrained")
        return {"phase": "retrain", "fixed": fixed, "seconds": round(time.perf_counter() - start, 3),
                "rss_before_mb": round(rss_start, 1), "peak_rss_mb": round(_peak_mb(), 1)}
    trained = cls.load(work / "retrained")
    users = active_users(data, 0)
    rss_loaded, reset = _rss_mb(), _reset_peak()
    facts = write_top_k(trained, data, users, work / f"recs-{batch}.parquet", k, batch)
    scoring_peak = _hwm_mb()
    return {"phase": "score", "batch_users": batch, "users": facts["users"], "rows": facts["rows"],
            "scoring_seconds": round(facts["seconds"], 3), "users_per_second": round(facts["users_per_second"], 1),
            "rss_model_loaded_mb": round(rss_loaded, 1), "process_peak_rss_mb": round(_peak_mb(), 1),
            "scoring_peak_rss_mb": round(scoring_peak, 1) if reset else None,
            "scoring_peak_over_loaded_mb": round(scoring_peak - rss_loaded, 1) if reset else None,
            "file_mb": round((work / f"recs-{batch}.parquet").stat().st_size / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dataset", default="hm")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--batches", default="64,256,1024")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=3, metavar=("WORK", "MODEL/VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work, name, batch = args.child
        model, variant = name.split("/")
        print(json.dumps(child(args.dataset, Path(work), model, variant, args.k, int(batch), args.threads)))
        return

    info = {**machine_info(), "torch_threads": args.threads}  # the children's threads
    with tempfile.TemporaryDirectory(prefix="mmrec-bench-serving-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        prepared = prepare(args.dataset, work)
        prepare_s = time.perf_counter() - t0
        best = prepared["champion"]
        runs = []
        for batch in [0] + [int(b) for b in args.batches.split(",")]:  # 0: retrain once
            cmd = [sys.executable, __file__, "--dataset", args.dataset, "--k", str(args.k), "--threads",
                   str(args.threads), "--child", str(work), f"{best['model']}/{best['variant']}", str(batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            if proc.returncode != 0:
                runs.append({"batch_users": batch, "error": proc.stderr[-2000:]})
                continue
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]))
    result = {
        "protocol": f"{args.dataset}: champion = best validation NDCG@10 (full ranking, `@valid` rows) among "
                    f"{', '.join(CANDIDATES)}; retrained on all interactions; top-{args.k} for every user "
                    "(active window off), history excluded unless the dataset counts repeats",
        "dataset": {k: prepared[k] for k in ("users", "items", "interactions")},
        "champion": best, "validation_ranking": prepared["ranking"], "prepare_seconds": round(prepare_s, 1),
        "runs": runs, "machine": info,
    }
    out = ROOT / "benchmarks" / "results" / "recommendations.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
