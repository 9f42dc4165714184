"""mmrec_dlrm's report section: the paper's pointwise protocol beside full-catalog ranking."""

from __future__ import annotations

import polars as pl

from mmrec_pipeline.evaluation.protocols import is_pointwise, is_sampled, is_test_stage
from mmrec_pipeline.evaluation.report import ReportInputs, Section
from mmrec_pipeline.storage import read_json_file

NAME = "mmrec_dlrm"
LOSSES = ("none", "basic", "sqrt")  # the paper's three losses, in its table's order (the model's grid uses them)


def report_table(metrics: pl.DataFrame, dropouts: dict[str, float] | None = None) -> pl.DataFrame:
    """One row per mmrec_dlrm variant: the paper's pointwise metrics (test) beside full-catalog ranking @10."""
    rows = metrics.filter(pl.col("model") == "mmrec_dlrm")
    point = rows.filter(is_pointwise())
    rank = rows.filter(~is_sampled() & is_test_stage() & ~is_pointwise() & (pl.col("k") == 10)
                       & pl.col("metric").is_in(["ndcg", "recall"]))
    variants = pl.DataFrame({"variant": rows["variant"].unique(maintain_order=True)})
    if point.height:
        wide = point.pivot(on="metric", index="variant", values="value", aggregate_function="first")
        variants = variants.join(wide.select("variant", *[c for c in ("accuracy", "fpr", "auc", "logloss")
                                                          if c in wide.columns]), on="variant", how="left")
    if rank.height:
        wide = rank.with_columns(pl.col("metric") + "@10").pivot(on="metric", index="variant", values="value",
                                                                  aggregate_function="first")
        variants = variants.join(wide, on="variant", how="left")
    if dropouts:
        variants = variants.with_columns(pl.col("variant").replace_strict(dropouts, default=None,
                                                                          return_dtype=pl.Float64).alias("dropout"))
    return variants


def report_note(table: pl.DataFrame, threshold: float | None, ranking: str) -> str:
    """What the table's numbers mean, and whether `full` beats raw reviews on FPR at equal or better AUC."""
    lines = [("Review summaries (and the raw-review vectors) are built from **training-period reviews only**; a "
              "summary is refreshed when its item's training reviews grow past the refresh thresholds."),
             f"Ranking: {ranking}."]
    if threshold is None or "fpr" not in table.columns:
        lines.append("Pointwise protocol skipped: this dataset has no ratings (the DLRM is trained on purchases "
                     "vs sampled non-purchases and only ranks).")
        return " ".join(lines)
    lines.insert(0, f"Pointwise protocol (the paper's): observed test-period reviews, label = rating ≥ {threshold:g}, "
                    "accuracy and FPR at probability 0.5, AUC and log-loss; dropout chosen on validation AUC.")
    by = {r["variant"]: r for r in table.iter_rows(named=True)}
    for loss in LOSSES:
        full, raw = by.get(f"full-{loss}"), by.get(f"raw-{loss}")
        if full and raw and full.get("fpr") is not None and raw.get("fpr") is not None:
            better = full["fpr"] < raw["fpr"] and full["auc"] >= raw["auc"]
            lines.append(f"full-{loss} vs raw-{loss}: FPR {full['fpr']:.4f} vs {raw['fpr']:.4f}, AUC {full['auc']:.4f} "
                         f"vs {raw['auc']:.4f}: " + ("lower FPR at equal or better AUC." if better else
                                                     "not a lower FPR at equal or better AUC on this dataset."))
    return " ".join(lines)


def section(inputs: ReportInputs) -> Section:
    """The paper's pointwise table beside full-catalog ranking, one row per variant (dropout and threshold read
    from each checkpoint's config.json, not its weights)."""
    configs = {variant: read_json_file(c)["config"]
               for variant, c in inputs.artifacts.checkpoint_configs(NAME).items()}
    table = report_table(inputs.metrics, {v: c["dropout"] for v, c in configs.items()})
    pointwise = inputs.metrics.filter((pl.col("model") == NAME) & is_pointwise())
    threshold = next(iter(configs.values()))["rating_threshold"] if pointwise.height and configs else None
    note = report_note(table, threshold, "every catalog item scored by the DLRM for each test user (full "
                       "catalog, the same users and evaluator as every other model); NDCG/recall @10")
    return Section("mmrec_dlrm: the paper's pointwise protocol beside full-catalog ranking", note, [table])
