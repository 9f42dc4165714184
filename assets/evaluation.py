"""`metrics` (every model's rows), `report` (report.html + Markdown) and the cross-dataset `leaderboard`."""

import json

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.models import all_model_names
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.data.splits import split_summary
from mmrec_pipeline.evaluation.audit import audit_sections
from mmrec_pipeline.evaluation.report import (
    build_report,
    html_table,
    leaderboard,
    md_table,
    qualitative_examples,
    user_accounting,
)
from mmrec_pipeline.models import FAMILIES, MM_LLMREC
from mmrec_pipeline.models.lvlm_retrieval import strategy_table
from mmrec_pipeline.models.mmrec_dlrm import report_note
from mmrec_pipeline.models.mmrec_dlrm import report_table as dlrm_table
from mmrec_pipeline.models.vq_bart import generation_section
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import Lake, read_parquet, write_text
from resources.storage import LakeResource


def extra_sections(spec, metrics: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame, lake: Lake) -> list:
    """The LVLM strategy table and mm_llmrec's qualitative examples, when those models ran."""
    sections = []
    models_dir = lake.models(spec.name)
    if metrics.filter(pl.col("model") == "lvlm_retrieval").height:
        captioners = {}
        for cfg in (models_dir / "lvlm_retrieval").glob("*/config.json"):
            captioners[cfg.parent.name] = json.loads(cfg.read_text())["extra"].get("captioner")
        table = strategy_table(metrics, captioners)
        change = pl.col("vs title (%)").round(1)
        table = table.with_columns(pl.format("{}{}%", pl.when(change >= 0).then(pl.lit("+")).otherwise(pl.lit("")),
                                             change).alias("vs title (%)"))  # shown as the paper does: +12.3%
        note = ("Every strategy ranks the whole catalog for the same test users. Caption rows name the captioner "
                "whose descriptions were used (`offline` = the packaged ImageNet CNN + colour + pattern captioner).")
        sections.append(("lvlm_retrieval: item-representation strategies", note + "\n\n" + md_table(table),
                         f"<p>{note}</p>" + html_table(table)))
    board = leaderboard(metrics).filter(pl.col("model") == "mm_llmrec")
    if board.height:
        variant = board["variant"][0]
        cls = MM_LLMREC["mm_llmrec"][0]
        model = cls.load(models_dir / "mm_llmrec" / variant)
        data = RecDataset.from_tables(spec.name, split, items, spec.split, spec.repeats_relevant)
        sections.append(qualitative_examples(model, data, f"mm_llmrec/{variant}: example recommendations"))
    if metrics.filter(pl.col("model") == "vq_bart").height:  # BERTScore beside NDCG, next to GRU4Rec and popularity
        data = RecDataset.from_tables(spec.name, split, items, spec.split, spec.repeats_relevant)
        sections.append(generation_section(metrics, data, models_dir, models_dir / "vq_vae" / "report.json"))
    if metrics.filter(pl.col("model") == "mmrec_dlrm").height:
        configs = {c.parent.name: json.loads(c.read_text())["config"]
                   for c in (models_dir / "mmrec_dlrm").glob("*/config.json")}
        table = dlrm_table(metrics, {v: c["dropout"] for v, c in configs.items()})
        pointwise = metrics.filter((pl.col("model") == "mmrec_dlrm") & pl.col("protocol").str.starts_with("pointwise"))
        threshold = next(iter(configs.values()))["rating_threshold"] if pointwise.height and configs else None
        note = report_note(table, threshold, "every catalog item scored by the DLRM for each test user (full "
                           "catalog, the same users and evaluator as every other model); NDCG/recall @10")
        sections.append(("mmrec_dlrm: the paper's pointwise protocol beside full-catalog ranking",
                         note + "\n\n" + md_table(table), f"<p>{note}</p>" + html_table(table)))
    sections += audit_sections(metrics, spec.split)  # each published system's claim vs our numbers
    return sections


FAMILY_OF = {model: family for family, group in FAMILIES.items() for model in group}


def read_per_user(lake: Lake, dataset: str) -> pl.DataFrame | None:
    """Every model's per-user test metrics (`<lake>/<dataset>/per_user/<model>.parquet`, written by the model
    assets), or None before any model wrote them."""
    folder = lake.per_user(dataset)
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    return pl.concat([read_parquet(f) for f in files], how="diagonal_relaxed") if files else None


# A model asset never materialized for a dataset (e.g. `mmrec run --select popularity+`) is left out and named in
# the metadata; one that failed stops `metrics` as any failed upstream step does.
@dg.asset(partitions_def=DATASETS, group_name="evaluation", io_manager_key="lake",
          ins={name: dg.AssetIn(name, metadata={"allow_missing": True}) for name in all_model_names})
def metrics(**model_tables: pl.DataFrame | None) -> dg.Output[pl.DataFrame]:
    """The long table: model, variant, protocol, metric, k, value — every trained model of the dataset."""
    absent = sorted(name for name, t in model_tables.items() if t is None)
    tables = [t for t in model_tables.values() if t is not None]
    if not tables:
        raise FileNotFoundError("no model asset is materialized for this dataset: materialize one before `metrics`")
    table = pl.concat(tables)
    board = leaderboard(table)
    accounting = user_accounting(table)  # test users total / evaluated / dropped by reason, per protocol
    return dg.Output(table, metadata={
        "models": table["model"].n_unique(), "variants": board.height,
        "best": board["name"][0] if board.height else "", "best_ndcg@10": float(board["ndcg"][0]) if board.height else 0.0,
        "test_users": dg.MetadataValue.md(md_table(accounting)) if accounting.height else "",
        "models_not_materialized": ", ".join(absent)})


@dg.asset(partitions_def=DATASETS, group_name="evaluation")
def report(context: dg.AssetExecutionContext, lake_store: LakeResource, metrics: pl.DataFrame, split: pl.DataFrame,
           items: pl.DataFrame, interactions: pl.DataFrame) -> dg.MaterializeResult:
    """`$MMREC_HOME/<dataset>/report.html`: leaderboard, per-K curves, metric bars, dataset and split figures."""
    spec = get_dataset(context.partition_key)
    facts = {"items": items.height, "items_with_image": int(items["image_sha256"].is_not_null().sum()),
             "categories": items["category"].n_unique(), "interactions (raw)": interactions.height,
             "users (raw)": interactions["user_id"].n_unique(), **split_summary(split)}
    lake = lake_store.lake()
    per_user = read_per_user(lake, spec.name)
    if per_user is not None:  # only the models in `metrics`: a stale file of a removed model must not count
        per_user = per_user.join(metrics.select("model", "variant").unique(), on=["model", "variant"], how="semi")
    page, md = build_report(spec.name, metrics, facts, spec.split, sections=extra_sections(spec, metrics, split, items, lake),
                            per_user=per_user, families=FAMILY_OF)
    path = write_text(page, lake.report(spec.name))
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)), "report": dg.MetadataValue.md(md),
                                          "per_user_rows": per_user.height if per_user is not None else 0})


@dg.asset(name="leaderboard", group_name="evaluation", io_manager_key="lake",
          ins={"metrics": dg.AssetIn("metrics", partition_mapping=dg.AllPartitionMapping(),
                                     metadata={"allow_missing_partitions": True})})
def leaderboard_all(metrics: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every materialized dataset's metrics in one table (DuckDB view `main.leaderboard`)."""
    return pl.concat([m.with_columns(pl.lit(ds).alias("dataset")) for ds, m in metrics.items()])
