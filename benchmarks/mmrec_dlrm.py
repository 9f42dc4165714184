"""Benchmark mmrec_dlrm (MMREC on TorchRec DLRM): summary re-run ratio, DLRM throughput, and the variant grid on
`sample` under both protocols.

    python benchmarks/mmrec_dlrm.py [--parts rerun,throughput,sample,hm] [--grid demo|paper] [--lake DIR]

- `rerun`: how many review summaries a new catalog version re-computes. Sample version 1 and version 2 (+2%
  items, two more months) are generated in memory (no LLM runs: the summarizer's inputs are what decide), split
  as the pipeline does, and each item's training reviews compared: under an exact content key any changed
  review set is re-summarised; under the refresh policy (`SummaryConfig.refresh_share` / `refresh_reviews`) only
  items whose training reviews grew past the thresholds are (`plan_refresh`, the code the asset runs).
- `throughput`: DLRM training examples/s and full-catalog scoring user·items/s on the sample's split and catalog
  with random 384-d vectors in place of the sentence vectors (speed does not depend on their values), at 1 and 2
  torch threads.
- `sample`: the demo grid (6 variants) or the paper grid (12) trained on sample v1 with the pipeline's features
  (offline captions, SmolLM2 summaries of training reviews, all-MiniLM-L6-v2 vectors; cached under `--lake`,
  slow the first time on a CPU), then the paper's pointwise protocol (test-period observed reviews, label = rating
  >= 4) and full-catalog ranking (shared evaluator), with the dropout grid's validation AUCs.
- `hm`: H&M from `$MMREC_DATA/hm` (no ratings, no reviews): the pointwise protocol is skipped, ranking runs
  (the variants that need reviews or captions are skipped with their reason).

Results: `benchmarks/results/mmrec_dlrm.json` (parts not run keep their previous values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_info

RESULTS = ROOT / "benchmarks" / "results" / "mmrec_dlrm.json"


def sample_split(version: int):
    import polars as pl

    from mmrec_pipeline.data.filtering import user_core
    from mmrec_pipeline.data.splits import make_split
    from mmrec_pipeline.data.synthetic import build

    tables = build(version, seed=7)  # datasets.yaml: sample {version: 1, seed: 7}
    items = tables["items"]
    inter = tables["interactions"]
    if "ts" in inter.columns and inter["ts"].dtype != pl.Datetime("us", "UTC"):
        inter = inter.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    return items, make_split(user_core(inter, 5), "temporal")


def rerun_ratio() -> dict:
    """Items re-summarised after sample v1 -> v2: exact content key vs the refresh policy."""
    import polars as pl

    from mmrec_pipeline.features.cache import content_key
    from mmrec_pipeline.features.summaries import (
        SummaryConfig,
        item_reviews,
        plan_refresh,
        training_cut,
        training_reviews,
    )

    cfg = SummaryConfig(max_reviews=3)  # datasets.yaml's sample budget
    items1, split1 = sample_split(1)
    items2, split2 = sample_split(2)
    v1 = item_reviews(items1, training_reviews(split1), cfg.max_reviews)
    v2 = item_reviews(items2, training_reviews(split2), cfg.max_reviews)
    cut1, cut2 = training_cut(training_reviews(split1)), training_cut(training_reviews(split2))
    # the store after summarising v1: one row per reviewed item, as `review_summaries` writes it
    reviewed1 = v1.filter(pl.col("n_reviews") > 0)
    cached = reviewed1.select("item_id", "n_reviews", "review_ids").with_columns(
        pl.Series("key", [content_key(r, cut1) for r in reviewed1["reviews"].to_list()], dtype=pl.Utf8))
    keys2 = [content_key(r, cut2) if r else None for r in v2["reviews"].to_list()]
    reviewed = int((v2["n_reviews"] > 0).sum())
    old_inputs = dict(zip(v1["item_id"].to_list(), v1["review_ids"].to_list(), strict=True))
    changed_inputs = sum(1 for i, ids, n in v2.select("item_id", "review_ids", "n_reviews").iter_rows()
                         if n > 0 and old_inputs.get(i) != ids)
    out = {"items_v1": items1.height, "items_v2": items2.height, "reviewed_items_v2": reviewed,
           "training_cut_v1": cut1, "training_cut_v2": cut2,
           "training_reviews_v1": int(v1["n_reviews"].sum()), "training_reviews_v2": int(v2["n_reviews"].sum()),
           "exact_key_recomputed": changed_inputs,
           "exact_key_ratio": round(changed_inputs / max(reviewed, 1), 4), "policies": []}
    for share, count in ((0.2, 5), (0.5, 10), (0.1, 3), (1.0, 1000)):
        plan = [a for a, _ in plan_refresh(v2, keys2, cached, SummaryConfig(refresh_share=share,
                                                                            refresh_reviews=count))]
        out["policies"].append({"refresh_share": share, "refresh_reviews": count, "recomputed": plan.count("compute"),
                                "kept": plan.count("keep"), "ratio": round(plan.count("compute") / max(reviewed, 1), 4)})
    print(json.dumps(out, indent=1))
    return out


def random_features(n_items: int, columns: list[str], seed: int = 0):
    from mmrec_pipeline.models.base import ItemFeatures

    rng = np.random.default_rng(seed)
    feats = ItemFeatures()
    for c in columns:
        vec = rng.normal(size=(n_items, 384)).astype(np.float32)
        feats.vectors[c], feats.present[c] = vec / np.linalg.norm(vec, axis=1, keepdims=True), np.ones(n_items, bool)
    return feats


def throughput() -> dict:
    import torch

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.models.mmrec_dlrm import MMRecDLRM

    items, split = sample_split(1)
    data = RecDataset.from_tables("sample", split, items)
    feats = random_features(data.n_items, ["sbert_title", "sbert_description", "sbert_summary",
                                           "sbert_caption_offline"])
    inputs = data.eval_inputs("test")
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model = MMRecDLRM(modalities="full", loss="sqrt", dropouts="0.3", epochs=2, patience=5)
        report = model.fit(data, feats, Compute(device="cpu"))
        users = inputs.users[:512]
        start = time.perf_counter()
        model.score(users, [inputs.history[i] for i in range(len(users))])
        seconds = time.perf_counter() - start
        row = {"threads": threads, "training_examples": report["training_examples"],
               "train_examples_per_second": round(report["examples_per_second"]),
               "score_users": len(users), "catalog": data.n_items, "score_seconds": round(seconds, 3),
               "score_user_items_per_second": round(len(users) * data.n_items / seconds),
               "load_average_1m_after": round(os.getloadavg()[0], 2), "torch": torch.__version__}
        print(json.dumps(row))
        out.append(row)
    return {"runs": out, "setup": "sample v1 split (temporal), 1,200-item catalog, modalities full (4 item + 4 user "
                                  "384-d vectors), batch 512, embedding 16, 2 epochs, dropout 0.3"}


def sample_grid(grid: str, lake: Path, summary_budget: int | None = None, only: list[str] | None = None,
                overrides: dict | None = None) -> dict:
    import polars as pl

    os.environ["MMREC_HOME"] = str(lake)
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.schema import validate
    from mmrec_pipeline.data.synthetic import read
    from mmrec_pipeline.evaluation.sections.mmrec_dlrm import report_table
    from mmrec_pipeline.features.captions import captions
    from mmrec_pipeline.features.summaries import SummaryConfig, raw_review_vectors, review_summaries
    from mmrec_pipeline.features.text import sbert_vectors, text_fields
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.mmrec_dlrm import DEMO_VARIANTS, VARIANTS, MMRecDLRM
    from mmrec_pipeline.models.runner import train_variants
    from mmrec_pipeline.storage import Lake
    from mmrec_pipeline.weights import ModelSources

    tables = validate(read(lake / "sample" / "raw", {"version": 1, "seed": 7}), "sample")
    from mmrec_pipeline.data.filtering import user_core
    from mmrec_pipeline.data.splits import make_split

    split = make_split(user_core(tables.interactions, 5), "temporal")
    compute, sources, cache = Compute(device="cpu"), ModelSources(), Lake(lake).feature_cache()
    cfg = SummaryConfig(max_reviews=3, max_review_tokens=48, max_new_tokens=24)  # datasets.yaml's sample budget
    cap, _ = captions(tables.items, sources, compute, cache, models=("offline",))
    summ, summ_stats = review_summaries(tables.items, split, sources, compute, cache, config=cfg,
                                        max_items_per_run=summary_budget)
    raw, _ = raw_review_vectors(tables.items, split, sources, compute, cache, cfg.max_reviews)
    # Only the fields the model reads (the asset embeds a few more); the same text cache as `text_embeddings`.
    fields = {k: v for k, v in text_fields(tables.items, cap, summ).items()
              if k in ("title", "description", "caption_offline", "summary")}
    long = pl.DataFrame({"item_id": pl.concat([tables.items["item_id"]] * len(fields)),
                         "text": pl.Series([t for texts in fields.values() for t in texts], dtype=pl.Utf8)})
    rows, _ = sbert_vectors(long, sources, compute, cache, None, None)
    n = tables.items.height
    text = tables.items.select("item_id").with_columns(
        rows["vector"].slice(i * n, n).alias(f"sbert_{f}") for i, f in enumerate(fields))
    data = RecDataset.from_tables("sample", split, tables.items)
    feats = ItemFeatures.from_table(data, text).merge(ItemFeatures.from_table(data, raw))
    variants = VARIANTS if grid == "paper" else DEMO_VARIANTS
    variants = {k: v for k, v in variants.items() if not only or k in only}
    start = time.perf_counter()
    # diversity falls back to categories (no sbert_text vectors here)
    runs, skipped = train_variants("mmrec_dlrm", MMRecDLRM, variants, data, feats, compute, lake / "models",
                                   dataset_overrides=overrides)
    metrics = pl.concat([r.metrics for r in runs])
    table = report_table(metrics, {r.variant: r.model.config.dropout for r in runs})
    print(table)
    return {"grid": grid, "variants": list(variants), "config_overrides": overrides or {}, "skipped": skipped, "seconds": round(time.perf_counter() - start, 1),
            "summaries": {**{k: v for k, v in summ_stats.items() if k in ("computed", "reused", "kept_stale",
                                                                            "training_cut", "with_reviews")},
                          "items_with_review_summary": int((summ["summary_source"] == "reviews").sum())},
            "protocols": {"pointwise": "test-period observed reviews, label = rating >= 4, accuracy/FPR at 0.5",
                          "ranking": "temporal split, full catalog, shared evaluator, @10"},
            "table": table.to_dicts(),
            "dropout_grid": {r.variant: [{k: t[k] for k in ("dropout", "valid", "best_epoch", "epochs")}
                                         for t in r.report["dropout_grid"]] for r in runs},
            "train_seconds": {r.variant: round(r.report["seconds"], 1) for r in runs},
            "eval_seconds": {r.variant: round(r.eval_seconds, 1) for r in runs}}


def hm_ranking(lake: Path) -> dict:
    """H&M (no ratings, no reviews): the pipeline's hm tables, title/description/summary vectors (the summary is
    the description: no reviews), captions left out (the offline captioner needs ~1 s per image here)."""
    import polars as pl

    os.environ["MMREC_HOME"] = str(lake)
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.ingest import load_dataset
    from mmrec_pipeline.data.splits import filter_and_split
    from mmrec_pipeline.evaluation.protocols import is_pointwise
    from mmrec_pipeline.evaluation.sections.mmrec_dlrm import report_note, report_table
    from mmrec_pipeline.features.summaries import review_summaries
    from mmrec_pipeline.features.text import text_embeddings
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.mmrec_dlrm import DEMO_VARIANTS, MMRecDLRM
    from mmrec_pipeline.models.runner import train_variants
    from mmrec_pipeline.registry import get_dataset
    from mmrec_pipeline.storage import Lake
    from mmrec_pipeline.weights import ModelSources

    spec = get_dataset("hm")
    tables = load_dataset(spec, Lake(lake))
    split, _ = filter_and_split(tables.interactions, spec.split, spec.min_user_interactions)
    compute, sources, cache = Compute(device="cpu"), ModelSources(), Lake(lake).feature_cache()
    summ, _ = review_summaries(tables.items, split, sources, compute, cache)  # no reviews: descriptions, no LLM
    text, _ = text_embeddings(tables.items, sources, compute, cache, summaries=summ, gpt2=False)
    data = RecDataset.from_tables("hm", split, tables.items, spec.split, spec.repeats_relevant)
    feats = ItemFeatures.from_table(data, text)
    start = time.perf_counter()
    runs, skipped = train_variants("mmrec_dlrm", MMRecDLRM, DEMO_VARIANTS, data, feats, compute, lake / "models",
                                   item_vectors=feats.get("sbert_text"))
    metrics = pl.concat([r.metrics for r in runs]) if runs else None
    table = report_table(metrics, {r.variant: r.model.config.dropout for r in runs}) if runs else None
    print(table)
    return {"variants_run": [r.variant for r in runs], "skipped": skipped,
            "seconds": round(time.perf_counter() - start, 1), "n_items": data.n_items, "n_users": data.n_users,
            "train_rows": data.train.height, "note": report_note(table, None, "full catalog") if runs else None,
            "table": table.to_dicts() if runs else [],
            "pointwise_rows": metrics.filter(is_pointwise()).height if runs else 0,
            "dropout_grid": {r.variant: [{k: t[k] for k in ("dropout", "valid", "best_epoch", "epochs")}
                                         for t in r.report["dropout_grid"]] for r in runs}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="rerun,throughput,sample")
    parser.add_argument("--grid", default="demo", choices=("demo", "paper"))
    parser.add_argument("--lake", type=Path, default=ROOT / "benchmarks" / ".work" / "mmrec_dlrm")
    parser.add_argument("--variants", default="", help="comma-separated subset of the grid (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epoch cap")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (parallel runs: one each)")
    parser.add_argument("--summary-budget", type=int, default=None,
                        help="summarise at most this many items this run (the rest keep no summary vector)")
    args = parser.parse_args()
    out = args.out
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine_info()
    parts = args.parts.split(",")
    if "rerun" in parts:
        results["summary_rerun_after_v2"] = rerun_ratio()
    if "throughput" in parts:
        results["throughput"] = throughput()
    if "sample" in parts:
        only = [v for v in args.variants.split(",") if v]
        overrides = {"epochs": args.epochs} if args.epochs else None
        results[f"sample_{args.grid}"] = sample_grid(args.grid, args.lake, args.summary_budget, only, overrides)
    if "hm" in parts:
        results["hm"] = hm_ranking(args.lake)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
