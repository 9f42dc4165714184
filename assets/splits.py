"""`split`: user k-core filter, then the dataset's temporal or leave-one-out split."""

import dagster as dg
import polars as pl

from assets import DATASETS, op_tags
from assets.automation import REFRESH
from assets.checks import check_result
from assets.metadata import plain
from mmrec_pipeline.data.splits import (
    check_items_known,
    check_no_leak,
    check_temporal_shares,
    filter_and_split,
    split_summary,
)
from mmrec_pipeline.registry import get_dataset

# Blocking: a bad split stops everything downstream of it. The checks run in the split's own step.
SPLIT_CHECKS = {"split_shares": "Temporal splits hold 75/15/10 of the rows, each within ±3 points",
                "split_no_leak": "No valid or test row is earlier than the train cut",
                "split_items_in_catalog": "Every item in the split exists in the catalog"}


# Priority: the split heads the longest chain of the demo (split -> review summaries -> text embeddings -> models).
@dg.asset(partitions_def=DATASETS, group_name="splits", io_manager_key="lake", op_tags=op_tags(None, long_running=True),
          automation_condition=REFRESH,
          ins={"interactions": dg.AssetIn("interactions"), "items": dg.AssetIn("items")},
          check_specs=[dg.AssetCheckSpec(name, asset="split", description=d, blocking=True)
                       for name, d in SPLIT_CHECKS.items()])
def split(context: dg.AssetExecutionContext, interactions: pl.DataFrame, items: pl.DataFrame):
    """Interactions of users with enough history, each labelled train / valid / test."""
    spec = get_dataset(context.partition_key)
    # Under `temporal` the k-core counts only rows before the training cut (data/splits.py, filter_and_split).
    out, dropped = filter_and_split(interactions, spec.split, spec.min_user_interactions, f"dataset '{spec.name}'")
    yield dg.Output(out, metadata={
        "protocol": spec.split, "min_user_interactions": spec.min_user_interactions, **plain(dropped),
        **plain(split_summary(out))})
    yield from split_checks(out, items, spec.split)


def split_checks(split: pl.DataFrame, items: pl.DataFrame, protocol: str):
    if protocol == "temporal":
        yield check_result(*check_temporal_shares(split), "train/valid/test shares within ±3 points of 75/15/10",
                           "split_shares")
        yield check_result(*check_no_leak(split), "no valid/test interaction precedes the train cut", "split_no_leak")
    else:
        yield check_result(True, {"protocol": protocol}, "not a temporal split: shares do not apply", "split_shares")
        yield check_result(True, {"protocol": protocol}, "leave-one-out: cuts are per user", "split_no_leak")
    yield check_result(*check_items_known(split, items), "every split item is in items", "split_items_in_catalog")
