"""Turn a trained model into rows of the long `metrics` table (DESIGN.md "Contract").

Every model goes through `evaluate_model`: full-catalog ranking on the test stage under the dataset's split
protocol, plus the `sampled:N` protocol only to show how sampling inflates numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.metrics import EvalResult, evaluate, sampled_candidates

KS = (5, 10, 20)
SAMPLED_NEGATIVES = 100
METRICS_SCHEMA = {"model": pl.Utf8, "variant": pl.Utf8, "protocol": pl.Utf8, "metric": pl.Utf8, "k": pl.Int64,
                  "value": pl.Float64}


def diversity_inputs(data: RecDataset, item_vectors: np.ndarray | None = None) -> dict:
    """What the beyond-accuracy metrics need: vectors when given, else categories; training popularity."""
    cats = data.items["category"].fill_null("").to_list() if item_vectors is None else None
    return {"item_vectors": item_vectors, "item_categories": cats, "train_counts": data.train_counts()}


def evaluate_model(model, data: RecDataset, model_name: str, variant: str = "default",
                   item_vectors: np.ndarray | None = None, sampled: int | None = SAMPLED_NEGATIVES,
                   stage: str = "test", batch_size: int = 256) -> tuple[pl.DataFrame, EvalResult]:
    """Metric rows for one trained model; also returns the full-ranking `EvalResult` for plots/tests."""
    inputs = data.eval_inputs(stage)
    extra = diversity_inputs(data, item_vectors)
    full = evaluate(model.score, inputs, ks=KS, batch_size=batch_size, **extra)
    rows = [{"protocol": data.protocol, **r} for r in full.rows]
    rows.append({"protocol": data.protocol, "metric": "users_evaluated", "k": None, "value": float(full.n_users)})
    if sampled:
        cand = dataclasses.replace(inputs, candidates=sampled_candidates(inputs, sampled, seed=0))
        samp = evaluate(model.score, cand, ks=KS, batch_size=batch_size)
        rows += [{"protocol": f"{data.protocol}+sampled:{sampled}", **r} for r in samp.rows
                 if r["metric"] in ("hr", "ndcg", "mrr")]
    if stage != "test":
        rows = [{**r, "protocol": f"{r['protocol']}@{stage}"} for r in rows]
    table = pl.DataFrame([{"model": model_name, "variant": variant, **r} for r in rows], schema=METRICS_SCHEMA)
    return table, full


def headline(table: pl.DataFrame, metric: str = "ndcg", k: int = 10) -> dict[str, float]:
    """{variant: value} of one full-ranking test metric, for asset metadata and logs."""
    t = table.filter((pl.col("metric") == metric) & (pl.col("k") == k) & ~pl.col("protocol").str.contains("sampled")
                     & ~pl.col("protocol").str.contains("@"))
    return dict(zip(t["variant"].to_list(), t["value"].to_list()))


def check_metrics(table: pl.DataFrame, protocol: str, ks: tuple[int, ...] = KS) -> tuple[bool, dict]:
    """No NaN/null values; every variant of a model has NDCG at every K for each protocol the model claims
    (any protocol one of its variants has), and every model has the test (`protocol`) and `protocol@valid` rows."""
    bad = table.filter(pl.col("value").is_null() | pl.col("value").is_nan())
    claimed = table.select("model", "protocol").unique()
    required = table.select("model").unique().join(
        pl.DataFrame({"protocol": [protocol, f"{protocol}@valid"]}), how="cross")
    expected = (pl.concat([claimed, required]).unique()
                .join(table.select("model", "variant").unique(), on="model")
                .join(pl.DataFrame({"k": list(ks)}, schema={"k": pl.Int64}), how="cross"))
    have = table.filter(pl.col("metric") == "ndcg").select("model", "variant", "protocol", "k").unique()
    missing = expected.join(have, on=["model", "variant", "protocol", "k"], how="anti").sort(
        "model", "variant", "protocol", "k")
    examples = [f"{r['model']}/{r['variant']} {r['protocol']} ndcg@{r['k']}" for r in missing.head(5).iter_rows(named=True)]
    nan_examples = [f"{r['model']}/{r['variant']} {r['protocol']} {r['metric']}@{r['k']}"
                    for r in bad.head(5).iter_rows(named=True)]
    return bad.height == 0 and missing.height == 0, {
        "nan_or_null_values": bad.height, "nan_examples": nan_examples, "missing_rows": missing.height,
        "missing_examples": examples, "models": table["model"].n_unique()}
