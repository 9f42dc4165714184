"""Blocking checks on `split` (a bad split stops everything downstream of it); checks on the feature tables,
the model assets (tuned on validation) and `metrics` (complete, every test user accounted for)."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.models import all_model_names
from mmrec_pipeline.data.splits import check_items_known, check_no_leak, check_temporal_shares
from mmrec_pipeline.evaluation.protocols import check_metrics, check_user_accounting
from mmrec_pipeline.features.summaries import check_training_only
from mmrec_pipeline.lake import FEATURE_TABLES, VALUE_COLUMNS, items_without_feature
from mmrec_pipeline.models.runner import check_tuning_records
from mmrec_pipeline.registry import get_dataset
from resources.storage import LakeResource


def _result(ok: bool, meta: dict, description: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(ok), metadata={k: dg.MetadataValue.json(v) if isinstance(v, (list, dict))
                                                          else v for k, v in meta.items()}, description=description)


@dg.asset_check(asset="split", blocking=True, partitions_def=DATASETS)
def split_shares(context: dg.AssetCheckExecutionContext, split: pl.DataFrame) -> dg.AssetCheckResult:
    """Temporal splits hold 75/15/10 of the rows, each within ±3 points."""
    if get_dataset(context.partition_key).split != "temporal":
        return _result(True, {"protocol": "loo"}, "not a temporal split: shares do not apply")
    ok, meta = check_temporal_shares(split)
    return _result(ok, meta, "train/valid/test shares within ±3 points of 75/15/10")


@dg.asset_check(asset="split", blocking=True, partitions_def=DATASETS)
def split_no_leak(context: dg.AssetCheckExecutionContext, split: pl.DataFrame) -> dg.AssetCheckResult:
    """No valid or test row is earlier than the train cut."""
    if get_dataset(context.partition_key).split != "temporal":
        return _result(True, {"protocol": "loo"}, "leave-one-out: cuts are per user")
    ok, meta = check_no_leak(split)
    return _result(ok, meta, "no valid/test interaction precedes the train cut")


@dg.asset_check(asset="split", blocking=True, partitions_def=DATASETS, additional_ins={"items": dg.AssetIn("items")})
def split_items_in_catalog(split: pl.DataFrame, items: pl.DataFrame) -> dg.AssetCheckResult:
    """Every item in the split exists in the catalog."""
    ok, meta = check_items_known(split, items)
    return _result(ok, meta, "every split item is in items")


@dg.asset_check(asset="metrics", partitions_def=DATASETS)
def metrics_users_accounted(metrics: pl.DataFrame) -> dg.AssetCheckResult:
    """Every test user is evaluated or dropped with a reason: total = evaluated + dropped, per model and protocol."""
    ok, meta = check_user_accounting(metrics)
    return _result(ok, meta, "test users total = evaluated + dropped (with reasons), for every model and protocol")


# Checks on `features` and `metrics` (issue 13). A feature check fails as ERROR when items failed, and as WARN when
# only a budget-limited run left items for later (the new-items sensor resumes the backfill).
def _last_materialization(context: dg.AssetCheckExecutionContext, asset: str) -> dict:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[context.partition_key]), limit=1).records
    if not records:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def feature_check(table: str, needs_image: bool) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=table, name=f"{table}_complete", partitions_def=DATASETS,
                    additional_ins={"items": dg.AssetIn("items")},
                    description=f"No item failed and none remains without {table} after the run")
    def _check(context: dg.AssetCheckExecutionContext, feature: pl.DataFrame, items: pl.DataFrame
               ) -> dg.AssetCheckResult:
        meta = _last_materialization(context, table)
        failed = sum(int(v) for k, v in meta.items() if k == "failed" or k.endswith(".failed"))
        missing = items_without_feature(items, feature, needs_image, VALUE_COLUMNS.get(table))
        ok = failed == 0 and missing.height == 0
        budget_left = int(meta.get("remaining", 0) or 0) > 0 and failed == 0
        return dg.AssetCheckResult(
            passed=ok, severity=dg.AssetCheckSeverity.WARN if budget_left else dg.AssetCheckSeverity.ERROR,
            metadata={"failed": failed, "items_without_value": missing.height,
                      "remaining_reported": int(meta.get("remaining", 0) or 0),
                      "examples": dg.MetadataValue.json(missing["item_id"].head(5).to_list())},
            description="complete" if ok else ("budget-limited run: the backfill continues" if budget_left
                                               else "items failed or were left without a value"))


    return _check


def tuning_check(model: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=model, name="tuned_on_validation", partitions_def=DATASETS)
    def _check(context: dg.AssetCheckExecutionContext, lake_store: LakeResource) -> dg.AssetCheckResult:
        """Each variant's checkpoint holds the point of its grid with the best validation NDCG@10."""
        ok, meta = check_tuning_records(lake_store.lake().models(context.partition_key, model))
        return _result(ok, meta, "every checkpoint is its grid's validation argmax")

    return _check


feature_checks = [feature_check(t, needs_image) for t, needs_image in FEATURE_TABLES.items()]


@dg.asset_check(asset="metrics", partitions_def=DATASETS)
def metrics_complete(context: dg.AssetCheckExecutionContext, metrics: pl.DataFrame) -> dg.AssetCheckResult:
    """No NaN; every variant has NDCG@5/10/20 for each protocol its model claims, plus test and @valid."""
    ok, meta = check_metrics(metrics, get_dataset(context.partition_key).split)
    return _result(ok, meta, "no NaN; every model has rows for every protocol it claims")


@dg.asset_check(asset="review_summaries", blocking=True, partitions_def=DATASETS,
                additional_ins={"split": dg.AssetIn("split")})
def review_summaries_training_only(review_summaries: pl.DataFrame, split: pl.DataFrame) -> dg.AssetCheckResult:
    """Summaries count (and cover) only training-period reviews: the MMREC label is the review's own rating."""
    ok, meta = check_training_only(review_summaries, split)
    return _result(ok, meta, "every item's reviews counted from the split's train rows only")


model_tuning_checks = [tuning_check(name) for name in all_model_names]
