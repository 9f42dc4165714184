"""lvlm_retrieval's report section: the paper-shaped strategy table."""

from __future__ import annotations

import polars as pl

from mmrec_pipeline.evaluation.protocols import is_main
from mmrec_pipeline.evaluation.report import ReportInputs, Section
from mmrec_pipeline.storage import read_json_file

NAME = "lvlm_retrieval"

LABELS = {
    "title": "Title text (SBERT)", "description": "Description text (SBERT)",
    "caption_llava": "LVLM caption (LLaVA)", "caption_blip2": "LVLM caption (BLIP-2)",
    "title_caption": "Title + LVLM caption", "vision": "Vision only", "concat": "Title + vision (concat)",
    "naive_avg": "Title + vision (naive 50/50)", "attention_fusion": "Attention fusion",
    "gating_fusion": "Gating fusion", "smore": "SMORE (spectral fusion)", "cross_attention": "Cross-modal attention",
}


def strategy_table(metrics: pl.DataFrame, captioners: dict[str, str | None] | None = None,
                   model: str = "lvlm_retrieval", k: int = 10) -> pl.DataFrame:
    """The paper's table: one row per strategy, best Recall@k first — Rank, Strategy, Recall@k, NDCG@k and the
    change of Recall@k vs `title` in % (as the paper's "vs BERT" column). Full-catalog protocol only; `users`
    shows that every row was evaluated on the same users. `captioners` ({variant: captioner actually used, from
    each checkpoint's extra_config}) relabels caption rows with the model that wrote the captions."""
    t = metrics.filter((pl.col("model") == model) & is_main())
    wide = (t.filter(pl.col("metric").is_in(["recall", "ndcg"]) & (pl.col("k") == k))
            .pivot(on="metric", index="variant", values="value", aggregate_function="first"))
    users = t.filter(pl.col("metric") == "users_evaluated").select("variant", pl.col("value").cast(pl.Int64).alias("users"))
    wide = wide.join(users, on="variant", how="left")
    base = wide.filter(pl.col("variant") == "title")["recall"]
    base = base[0] if len(base) and base[0] else None
    captioners = captioners or {}

    def label(v: str) -> str:
        used = captioners.get(v)
        if used and v.startswith(("caption_", "title_caption")):
            return f"{LABELS.get(v, v).split(' (')[0]} ({used})"
        return LABELS.get(v, v)

    labels = {v: label(v) for v in wide["variant"].to_list()}
    wide = wide.sort("recall", descending=True, nulls_last=True).with_columns(
        pl.int_range(1, pl.len() + 1).alias("rank"),
        pl.col("variant").replace_strict(labels, return_dtype=pl.Utf8).alias("label"),
        ((pl.col("recall") / base - 1) * 100).round(1).alias("vs title (%)") if base
        else pl.lit(None, dtype=pl.Float64).alias("vs title (%)"))
    return wide.select("rank", pl.col("variant").alias("strategy"), "label", pl.col("recall").alias(f"Recall@{k}"),
                       pl.col("ndcg").alias(f"NDCG@{k}"), "vs title (%)", "users")


def section(inputs: ReportInputs) -> Section:
    """The paper's strategy table, each caption row named by the captioner its checkpoint used (read from the
    checkpoint's config.json, not its weights)."""
    captioners = {variant: read_json_file(c)["extra"].get("captioner")
                  for variant, c in inputs.artifacts.checkpoint_configs(NAME).items()}
    table = strategy_table(inputs.metrics, captioners)
    change = pl.col("vs title (%)").round(1)
    table = table.with_columns(pl.format("{}{}%", pl.when(change >= 0).then(pl.lit("+")).otherwise(pl.lit("")),
                                         change).alias("vs title (%)"))  # shown as the paper does: +12.3%
    note = ("Every strategy ranks the whole catalog for the same test users. Caption rows name the captioner "
            "whose descriptions were used (`offline` = the packaged ImageNet CNN + colour + pattern captioner).")
    return Section("lvlm_retrieval: item-representation strategies", note, [table])
