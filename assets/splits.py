"""`split`: k-core filter, then the dataset's temporal or leave-one-out split."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.metadata import plain
from mmrec_pipeline.data.filtering import user_core
from mmrec_pipeline.data.splits import make_split, split_summary
from mmrec_pipeline.registry import get_dataset


@dg.asset(partitions_def=DATASETS, group_name="splits", io_manager_key="lake")
def split(context: dg.AssetExecutionContext, interactions: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """Interactions of users with enough history, each labelled train / valid / test."""
    spec = get_dataset(context.partition_key)
    kept = user_core(interactions, spec.min_user_interactions, f"dataset '{spec.name}'")
    out = make_split(kept, spec.split)
    return dg.Output(out, metadata={
        "protocol": spec.split, "min_user_interactions": spec.min_user_interactions,
        "rows_dropped_by_filter": interactions.height - kept.height, **plain(split_summary(out))})
