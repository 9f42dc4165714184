"""Benchmark `make demo`: `mmrec run --dataset sample` (every asset) in a fresh lake, timed per step.

    python benchmarks/demo.py [--lake /tmp/demo-lake] [--keep]
    python benchmarks/demo.py --dtypes    # only: SmolLM2 summaries in float32 vs bfloat16, CPU seconds

Runs the pipeline in this process, as `mmrec run` does, so each step's CPU seconds (every thread) are recorded
beside its wall seconds: on a shared machine wall time grows with the load, CPU time much less. Saves the machine
(CPU model and flags, load average at start and end; `ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` when set, e.g.
`avx2` to emulate a CPU without AVX-512 on one that has it), the total wall and CPU time, the per-step table and
the test NDCG@10 of every model/variant with its 95% bootstrap CI over users (the report's), to
`benchmarks/results/demo.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo.json"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_info


def cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat): the steps run in forked step processes this process
    does not reap, so its own rusage misses them. On an idle machine this is the demo's CPU time."""
    busy = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in busy[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def test_ndcg_with_ci(dataset_dir: Path) -> list[dict]:
    """NDCG@10 per model/variant on test with the 95% percentile bootstrap CI over users (per_user/*.parquet)."""
    import polars as pl

    from mmrec_pipeline.evaluation.protocols import per_user_stage
    from mmrec_pipeline.evaluation.significance import bootstrap_ci

    rows = []
    for path in sorted((dataset_dir / "per_user").glob("*.parquet")):
        per_user = per_user_stage(pl.read_parquet(path), "test")  # test rows, each user's mean over seeds
        if per_user is None:
            continue
        for (model, variant), group in per_user.group_by(["model", "variant"], maintain_order=True):
            values = group["ndcg@10"].to_numpy()
            low, high = bootstrap_ci(values)
            rows.append({"model": model, "variant": variant, "ndcg@10": round(float(values.mean()), 4),
                         "ci95": [round(low, 4), round(high, 4)], "users": len(values)})
    return sorted(rows, key=lambda r: -r["ndcg@10"])


def summarizer_dtypes(items: int = 16) -> dict:
    """CPU seconds of `items` review summaries (sample's prompt budgets, 1 thread) per dtype: whether float32 or
    bfloat16 is faster on this CPU (bf16 is emulated without AVX512-BF16/AMX)."""
    import torch

    from mmrec_pipeline.compute import Compute, cpu_has_native_bf16
    from mmrec_pipeline.features.summaries import SummaryConfig, load_summarizer, summarize
    from mmrec_pipeline.storage import Lake
    from mmrec_pipeline.weights import ModelSources

    torch.set_num_threads(1)
    compute = Compute(device="cpu")
    reviews = [[f"Review {i}: lovely colour, soft cotton, runs a bit small, order a size up."] * 3
               for i in range(items)]
    config = SummaryConfig(max_reviews=3, max_review_tokens=48, max_new_tokens=24, max_batch=items)
    out = {"native_bf16": cpu_has_native_bf16(), "auto_picks": str(compute.inference_dtype),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "items": items}
    for dtype in (torch.float32, torch.bfloat16):
        model, tokenizer = load_summarizer(ModelSources(), compute, Lake().feature_cache(), dtype=dtype)
        summarize(model, tokenizer, reviews[:2], config, compute)  # warm-up
        start = time.process_time()
        summarize(model, tokenizer, reviews, config, compute)
        out[f"{dtype}".removeprefix("torch.") + "_cpu_seconds"] = round(time.process_time() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--lake", type=Path, help="fresh lake folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the lake afterwards")
    parser.add_argument("--dtypes", action="store_true", help="only compare the summarizer's dtypes")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="JSON to write (e.g. one per machine, so an emulated run keeps the real CPU's)")
    args = parser.parse_args()
    results = args.results
    if args.dtypes:
        saved = json.loads(results.read_text()) if results.exists() else {}
        saved["summarizer_dtypes"] = {"machine": machine_info(), **summarizer_dtypes()}
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(saved, indent=1) + "\n")
        print(json.dumps(saved["summarizer_dtypes"], indent=1))
        return
    lake = args.lake or Path(tempfile.mkdtemp(prefix="mmrec-demo-bench-"))
    if lake.exists() and any(lake.iterdir()):
        sys.exit(f"{lake} is not empty: the benchmark times a fresh lake")
    os.environ["MMREC_HOME"] = str(lake)
    os.environ.pop("DAGSTER_HOME", None)
    machine = machine_info()

    from resources.cli import instance_home, process_tags

    instance_home()
    from resources.runner import materialize_dataset, timing_table

    wall, cpu = time.perf_counter(), cpu_seconds()
    outcome = materialize_dataset("sample", tags=process_tags())
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    print(timing_table(outcome.steps))
    result = {
        **({"summarizer_dtypes": json.loads(results.read_text()).get("summarizer_dtypes")} if results.exists() else {}),
        "machine": {**machine, "load_average_1m_5m_15m_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": "mmrec run --dataset sample (local executor: two step processes at a time, fresh lake)",
        "succeeded": outcome.ok, "failures": outcome.failures,
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "steps": [{"step": s.step, "wall_seconds": round(s.wall_seconds, 1),
                   "cpu_seconds": None if s.cpu_seconds is None else round(s.cpu_seconds, 1), "ok": s.ok}
                  for s in sorted(outcome.steps, key=lambda s: -s.wall_seconds)],
        "test_ndcg@10": {"protocol": "temporal split, test users, full catalog, history masked; 95% percentile "
                                     "bootstrap CI over users (1000 resamples)",
                         "rows": test_ndcg_with_ci(lake / "sample")},
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s, {'succeeded' if outcome.ok else 'FAILED'}; saved {results}")
    if not args.keep and not args.lake:
        shutil.rmtree(lake, ignore_errors=True)


if __name__ == "__main__":
    main()
