"""`metrics` (every model's rows), `report` (report.html + Markdown) and the cross-dataset `leaderboard`."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.models import all_model_names
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.data.splits import split_summary
from mmrec_pipeline.evaluation.audit import audit_sections
from mmrec_pipeline.evaluation.report import (
    ReportInputs,
    Section,
    build_report,
    leaderboard,
    md_table,
    user_accounting,
)
from mmrec_pipeline.models import FAMILIES, MODELS
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import dataset_dir, write_text


def model_sections(spec, metrics: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame) -> list[Section]:
    """Each model that ran adds its own section through its `report_section` hook (registry order), then the
    seed audit: each published system's claim beside our numbers."""
    data = RecDataset.from_tables(spec.name, split, items, spec.split, spec.repeats_relevant)
    inputs = ReportInputs(metrics, data, dataset_dir(spec.name) / "models")
    ran = set(metrics["model"].unique().to_list())
    sections = [cls.report_section(inputs) for name, cls in MODELS.items()
                if name in ran and cls.report_section is not None]
    return [s for s in sections if s is not None] + audit_sections(metrics, spec.split)


FAMILY_OF = {model: family for family, group in FAMILIES.items() for model in group}


def read_per_user(dataset: str) -> pl.DataFrame | None:
    """Every model's per-user test metrics (`<lake>/<dataset>/per_user/<model>.parquet`, written by the model
    assets), or None before any model wrote them."""
    files = sorted((dataset_dir(dataset) / "per_user").glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else None


@dg.asset(partitions_def=DATASETS, group_name="evaluation", io_manager_key="lake",
          ins={name: dg.AssetIn(name) for name in all_model_names})
def metrics(**model_tables: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """The long table: model, variant, protocol, metric, k, value — every trained model of the dataset."""
    table = pl.concat(list(model_tables.values()))
    board = leaderboard(table)
    accounting = user_accounting(table)  # test users total / evaluated / dropped by reason, per protocol
    return dg.Output(table, metadata={
        "models": table["model"].n_unique(), "variants": board.height,
        "best": board["name"][0] if board.height else "", "best_ndcg@10": float(board["ndcg"][0]) if board.height else 0.0,
        "test_users": dg.MetadataValue.md(md_table(accounting)) if accounting.height else ""})


@dg.asset(partitions_def=DATASETS, group_name="evaluation")
def report(context: dg.AssetExecutionContext, metrics: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame,
           interactions: pl.DataFrame) -> dg.MaterializeResult:
    """`$MMREC_HOME/<dataset>/report.html`: leaderboard, per-K curves, metric bars, dataset and split figures."""
    spec = get_dataset(context.partition_key)
    facts = {"items": items.height, "items_with_image": int(items["image_sha256"].is_not_null().sum()),
             "categories": items["category"].n_unique(), "interactions (raw)": interactions.height,
             "users (raw)": interactions["user_id"].n_unique(), **split_summary(split)}
    per_user = read_per_user(spec.name)
    if per_user is not None:  # only the models in `metrics`: a stale file of a removed model must not count
        per_user = per_user.join(metrics.select("model", "variant").unique(), on=["model", "variant"], how="semi")
    page, md = build_report(spec.name, metrics, facts, spec.split, sections=model_sections(spec, metrics, split, items),
                            per_user=per_user, families=FAMILY_OF)
    path = write_text(page, dataset_dir(spec.name) / "report.html")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)), "report": dg.MetadataValue.md(md),
                                          "per_user_rows": per_user.height if per_user is not None else 0})


@dg.asset(name="leaderboard", group_name="evaluation", io_manager_key="lake",
          ins={"metrics": dg.AssetIn("metrics", partition_mapping=dg.AllPartitionMapping(),
                                     metadata={"allow_missing_partitions": True})})
def leaderboard_all(metrics: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every materialized dataset's metrics in one table (DuckDB view `main.leaderboard`)."""
    return pl.concat([m.with_columns(pl.lit(ds).alias("dataset")) for ds, m in metrics.items()])
