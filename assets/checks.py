"""Blocking checks on `split`: a bad split stops everything downstream of it. Checks on the model assets."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.models import all_model_names
from mmrec_pipeline.data.splits import check_items_known, check_no_leak, check_temporal_shares
from mmrec_pipeline.models.runner import check_tuning_records
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import dataset_dir


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


def tuning_check(model: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=model, name="tuned_on_validation", partitions_def=DATASETS)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        """Each variant's checkpoint holds the point of its grid with the best validation NDCG@10."""
        ok, meta = check_tuning_records(dataset_dir(context.partition_key) / "models" / model)
        return _result(ok, meta, "every checkpoint is its grid's validation argmax")

    return _check


model_tuning_checks = [tuning_check(name) for name in all_model_names]
