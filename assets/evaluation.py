"""`metrics` (every model's rows), `report` (report.html + Markdown) and the cross-dataset `leaderboard`."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.models import all_model_names
from mmrec_pipeline.data.splits import split_summary
from mmrec_pipeline.evaluation.report import build_report, leaderboard
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import dataset_dir, write_text


@dg.asset(partitions_def=DATASETS, group_name="evaluation", io_manager_key="lake",
          ins={name: dg.AssetIn(name) for name in all_model_names})
def metrics(**model_tables: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """The long table: model, variant, protocol, metric, k, value — every trained model of the dataset."""
    table = pl.concat(list(model_tables.values()))
    board = leaderboard(table)
    return dg.Output(table, metadata={
        "models": table["model"].n_unique(), "variants": board.height,
        "best": board["name"][0] if board.height else "", "best_ndcg@10": float(board["ndcg"][0]) if board.height else 0.0})


@dg.asset(partitions_def=DATASETS, group_name="evaluation")
def report(context: dg.AssetExecutionContext, metrics: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame,
           interactions: pl.DataFrame) -> dg.MaterializeResult:
    """`$MMREC_HOME/<dataset>/report.html`: leaderboard, per-K curves, metric bars, dataset and split figures."""
    spec = get_dataset(context.partition_key)
    facts = {"items": items.height, "items_with_image": int(items["image_sha256"].is_not_null().sum()),
             "categories": items["category"].n_unique(), "interactions (raw)": interactions.height,
             "users (raw)": interactions["user_id"].n_unique(), **split_summary(split)}
    page, md = build_report(spec.name, metrics, facts, spec.split)
    path = write_text(page, dataset_dir(spec.name) / "report.html")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)), "report": dg.MetadataValue.md(md)})


@dg.asset(name="leaderboard", group_name="evaluation", io_manager_key="lake",
          ins={"metrics": dg.AssetIn("metrics", partition_mapping=dg.AllPartitionMapping(),
                                     metadata={"allow_missing_partitions": True})})
def leaderboard_all(metrics: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every materialized dataset's metrics in one table (DuckDB view `main.leaderboard`)."""
    return pl.concat([m.with_columns(pl.lit(ds).alias("dataset")) for ds, m in metrics.items()])
