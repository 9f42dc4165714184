"""`metrics` (every model's rows), `report` (report.html + Markdown) and the cross-dataset `leaderboard`."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.automation import ACROSS_DATASETS, REFRESH
from assets.metadata import rounded
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
from mmrec_pipeline.evaluation.sections.ranker import section as ranker_section
from mmrec_pipeline.models import MODEL_GROUPS, MODELS, ranker
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import Lake, read_parquet, write_text
from resources.storage import LakeResource


def model_sections(spec, metrics: pl.DataFrame, split: pl.DataFrame, items: pl.DataFrame, lake: Lake) -> list[Section]:
    """Each model that ran adds its own section through its `report_section` hook (registry order), then the
    seed audit: each published system's claim beside our numbers."""
    data = RecDataset.from_tables(spec.name, split, items, spec.split, spec.repeats_relevant)
    inputs = ReportInputs(metrics, data, lake.dataset_view(spec.name))
    ran = set(metrics["model"].unique().to_list())
    sections = [cls.report_section(inputs) for name, cls in MODELS.items()
                if name in ran and cls.report_section is not None]
    if ranker.NAME in ran:  # the two-stage ranker is not a registry model: its block comes after theirs
        sections.append(ranker_section(inputs))
    return [s for s in sections if s is not None] + audit_sections(metrics, spec.split, MODELS)


GROUP_OF = {model: group for group, models in MODEL_GROUPS.items() for model in models} | {ranker.NAME: "two-stage"}


def read_per_user(lake: Lake, dataset: str, metrics: pl.DataFrame) -> pl.DataFrame | None:
    """Every model's per-user metrics (`<lake>/<dataset>/per_user/<model>.parquet`, written by the model assets:
    test rows for every seed, the chosen point's `@valid` rows) of the model/variants in `metrics` (a stale file of
    a removed model must not count), or None before any model wrote them."""
    folder = lake.dataset_view(dataset).per_user_dir
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return None
    per_user = pl.concat([read_parquet(f) for f in files], how="diagonal_relaxed")
    return per_user.join(metrics.select("model", "variant").unique(), on=["model", "variant"], how="semi")


# A model asset never materialized for a dataset (e.g. `mmrec run --select popularity+`) is left out and named in
# the metadata; one that failed stops `metrics` as any failed upstream step does.
@dg.asset(partitions_def=DATASETS, group_name="evaluation", io_manager_key="lake", automation_condition=REFRESH,
          ins={name: dg.AssetIn(name, metadata={"allow_missing": True}) for name in (*all_model_names, ranker.NAME)})
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
        "best": board["name"][0] if board.height else "", "best_ndcg@10": rounded(float(board["ndcg"][0])) if board.height else 0.0,
        "test_users": dg.MetadataValue.md(md_table(accounting)) if accounting.height else "",
        "models_not_materialized": ", ".join(absent)})


@dg.asset(partitions_def=DATASETS, group_name="evaluation", automation_condition=REFRESH)
def report(context: dg.AssetExecutionContext, lake_store: LakeResource, metrics: pl.DataFrame, split: pl.DataFrame,
           items: pl.DataFrame, interactions: pl.DataFrame) -> dg.MaterializeResult:
    """`$MMREC_HOME/<dataset>/report.html`: leaderboard, per-K curves, metric bars, dataset and split figures."""
    spec = get_dataset(context.partition_key)
    facts = {"items": items.height, "items_with_image": int(items["image_sha256"].is_not_null().sum()),
             "categories": items["category"].n_unique(), "interactions (raw)": interactions.height,
             "users (raw)": interactions["user_id"].n_unique(), **split_summary(split)}
    lake = lake_store.lake()
    per_user = read_per_user(lake, spec.name, metrics)
    # Users the k-core removed before the split (under `temporal` counted on rows before the training cut).
    rule = (f"dropped by the user {spec.min_user_interactions}-core" + (" on rows before the training cut"
            if spec.split == "temporal" else "") + (" and the 5-core on items" if spec.split == "recbole" else ""))
    filtered = {rule: interactions["user_id"].n_unique() - split["user_id"].n_unique()}
    page, md = build_report(spec.name, metrics, facts, spec.split,
                            sections=model_sections(spec, metrics, split, items, lake),
                            per_user=per_user, model_groups=GROUP_OF, filtered=filtered)
    path = write_text(page, lake.dataset_view(spec.name).report)
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)), "report": dg.MetadataValue.md(md),
                                          "per_user_rows": per_user.height if per_user is not None else 0})


@dg.asset(name="leaderboard", group_name="evaluation", io_manager_key="lake", automation_condition=ACROSS_DATASETS,
          ins={"metrics": dg.AssetIn("metrics", partition_mapping=dg.AllPartitionMapping(),
                                     metadata={"allow_missing_partitions": True})})
def leaderboard_all(metrics: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Every materialized dataset's metrics in one table (DuckDB view `main.leaderboard`)."""
    return pl.concat([m.with_columns(pl.lit(ds).alias("dataset")) for ds, m in metrics.items()])
