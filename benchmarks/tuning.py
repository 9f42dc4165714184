"""What validation tuning costs and changes for the cheap models on `sample`.

    python benchmarks/tuning.py [--models popularity,item_knn,ease,content,bpr_mf,lvlm_retrieval]

For each model, every registry variant is trained by the runner twice: once at its config defaults (no grid) and
once over its declared search space (`Recommender.search_space_for`), choosing on validation NDCG@10. Per model:
wall and CPU seconds of both runs (the difference is what the grid adds to `make demo`), the chosen point and
both validation NDCG@10 values. The test NDCG@10 of both is printed for information only: it played no part in
any choice. Features are the sample's cached ones (benchmarks/mm_llmrec.py prepares them). Results:
`benchmarks/results/tuning.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info
from mm_llmrec import WORK, load_sample, prepare_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, installed or not
RESULTS = ROOT / "benchmarks" / "results" / "tuning.json"
CHEAP = ("popularity", "item_knn", "ease", "content", "bpr_mf", "lvlm_retrieval")


def run(name: str, cls, variants: dict, data, feats, search: bool) -> dict:
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.evaluation.protocols import headline
    from mmrec_pipeline.models.runner import train_variants

    overrides = None if search else {"search_space": {}}
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as out:
        runs, skipped = train_variants(name, cls, variants, data, feats, Compute(device="cpu"), Path(out),
                                       overrides, item_vectors=feats.get("sbert_text"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "skipped": sorted(skipped)}
    for r in runs:
        valid = r.metrics.filter(r.metrics["protocol"].str.ends_with("@valid"))
        test = r.metrics.filter(~r.metrics["protocol"].str.contains("@"))
        out[r.variant] = {"chosen": r.chosen, "points": len(r.grid),
                          "valid_ndcg@10": round(headline(valid)[r.variant], 5),
                          "test_ndcg@10 (information only)": round(headline(test)[r.variant], 5)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(CHEAP))
    args = parser.parse_args()
    from mmrec_pipeline.models import CLASSIC, LVLM

    registry = {**CLASSIC, **LVLM}
    if not (WORK / "features.npz").exists():
        prepare_sample()
    data, feats = load_sample()
    # Models measured by an earlier run (`--models` subsets) are kept; each model's entry says when it ran.
    previous = json.loads(RESULTS.read_text())["models"] if RESULTS.exists() else {}
    result = {"machine": machine_info(), "dataset": "sample (temporal split, full catalog)", "models": previous}
    for name in args.models.split(","):
        cls = registry[name]
        variants = cls.variants
        default, tuned = run(name, cls, variants, data, feats, False), run(name, cls, variants, data, feats, True)
        added = round(tuned["wall_seconds"] - default["wall_seconds"], 2)
        result["models"][name] = {"defaults": default, "tuned": tuned, "added_wall_seconds": added,
                                  "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
        save(result)
        print(f"{name}: defaults {default['wall_seconds']}s, tuned {tuned['wall_seconds']}s (+{added}s); "
              + "; ".join(f"{v}: {tuned[v]['chosen']} valid {default[v]['valid_ndcg@10']} -> "
                          f"{tuned[v]['valid_ndcg@10']}" for v in variants if v in tuned), flush=True)
    save(result)
    print(f"added by the grids: {result['added_wall_seconds_total']}s wall; written {RESULTS}")


def save(result: dict) -> None:
    result["added_wall_seconds_total"] = round(sum(m["added_wall_seconds"] for m in result["models"].values()), 2)
    result["machine"]["load_average_1m_5m_15m_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
