"""Blocking checks on `split` (a bad split stops everything downstream of it), on review summaries (training rows
only) and checks on `metrics` (complete, every test user accounted for). The feature and model assets check their
own output in their step (`<feature>_complete`, `tuned_on_validation`: assets/features.py, assets/models.py)."""

import dagster as dg
import polars as pl

from assets import DATASETS
from mmrec_pipeline.data.splits import check_items_known, check_no_leak, check_temporal_shares
from mmrec_pipeline.evaluation.protocols import check_metrics, check_user_accounting
from mmrec_pipeline.features.summaries import check_training_only
from mmrec_pipeline.registry import get_dataset


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

