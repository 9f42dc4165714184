"""A blocking check on review summaries (training rows only) and checks on `metrics` (complete, every test user
accounted for). `split`, the feature and the model assets check their own output in their step (blocking split
checks, `<feature>_complete`, `tuned_on_validation`: assets/splits.py, features.py, models.py)."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.metadata import rounded
from mmrec_pipeline.evaluation.protocols import check_metrics, check_user_accounting
from mmrec_pipeline.features.summaries import check_training_only
from mmrec_pipeline.registry import get_dataset


def check_result(ok: bool, meta: dict, description: str, name: str | None = None,
                 severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=bool(ok), description=description, severity=severity, metadata={
        k: dg.MetadataValue.json(v) if isinstance(v, (list, dict)) else rounded(v) for k, v in meta.items()})


@dg.asset_check(asset="metrics", partitions_def=DATASETS)
def metrics_users_accounted(metrics: pl.DataFrame) -> dg.AssetCheckResult:
    """Every test user is evaluated or dropped with a reason: total = evaluated + dropped, per model and protocol."""
    ok, meta = check_user_accounting(metrics)
    return check_result(ok, meta, "test users total = evaluated + dropped (with reasons), for every model and protocol")


@dg.asset_check(asset="metrics", partitions_def=DATASETS)
def metrics_complete(context: dg.AssetCheckExecutionContext, metrics: pl.DataFrame) -> dg.AssetCheckResult:
    """No NaN; every variant has NDCG@5/10/20 for each protocol its model claims, plus test and @valid."""
    ok, meta = check_metrics(metrics, get_dataset(context.partition_key).split)
    return check_result(ok, meta, "no NaN; every model has rows for every protocol it claims")


@dg.asset_check(asset="review_summaries", blocking=True, partitions_def=DATASETS,
                additional_ins={"split": dg.AssetIn("split")})
def review_summaries_training_only(review_summaries: pl.DataFrame, split: pl.DataFrame) -> dg.AssetCheckResult:
    """Summaries count and read only training-period reviews (by review id): the MMREC label is the review's own
    rating."""
    ok, meta = check_training_only(review_summaries, split)
    return check_result(ok, meta, "every item's reviews counted from the split's train rows only, and every review "
                        "a summary read (by id) is one of the item's training reviews")

