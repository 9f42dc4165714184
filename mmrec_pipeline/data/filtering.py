"""Filters applied before splitting."""

from __future__ import annotations

import polars as pl

from mmrec_pipeline.data.schema import DataError
from mmrec_pipeline.registry import registry_name


def user_core(interactions: pl.DataFrame, min_user_interactions: int, source: str = "interactions",
              before=None) -> pl.DataFrame:
    """Keep users with at least `min_user_interactions` interactions (the papers' 5-core on users); with
    `before` (a timestamp: the temporal split's training cut) only interactions earlier than it count, so
    which users are kept does not depend on valid- or test-period activity.

    Only users are filtered: removing rare items too would shrink the catalog the evaluator ranks over.
    """
    keep = user_core_mask(interactions, min_user_interactions, source, before)
    return interactions if keep.all() else interactions.filter(keep)  # nobody dropped: no copy


def user_core_mask(interactions: pl.DataFrame, min_user_interactions: int, source: str = "interactions",
                   before=None, alive: pl.Series | None = None) -> pl.Series:
    """`user_core`'s rows as a mask; `alive`: only these rows exist (the others' users are counted without them).
    A row mask from a window count, not a semi join on a table of kept users: the join copies and hashes every row,
    which set the split stage's peak memory at H&M's full size (benchmarks/scale.py; docs/BENCHMARKS.md)."""
    counts = [pl.col("ts") < before] if before is not None else []
    frame = interactions
    if alive is not None:  # as a column (columns are shared, not copied): a window slices columns, not a Series
        frame, counts = interactions.with_columns(alive.alias("_alive")), [*counts, pl.col("_alive")]
    counted = pl.all_horizontal(counts).sum() if counts else pl.len()
    keep = frame.select(counted.over("user_id") >= min_user_interactions).to_series()
    if alive is not None:
        keep = keep & alive
    if not keep.any():
        raise DataError(
            f"{source}: no user has at least {min_user_interactions} interactions"
            f"{'' if before is None else f' before the training cut {before}'} "
            f"({interactions.height} interactions, {interactions['user_id'].n_unique()} users before filtering); "
            f"lower min_user_interactions for this dataset in {registry_name()}")
    return keep


def user_item_core(interactions: pl.DataFrame, k: int, source: str = "interactions") -> pl.DataFrame:
    """Iterative k-core on users *and* items (RecBole's `user_inter_num_interval` / `item_inter_num_interval`
    `[k,inf)`): drop users and items with fewer than `k` interactions, repeat until none is left to drop.
    Used by the `recbole` protocol only, since it shrinks the catalog the evaluator ranks over."""
    out = interactions
    while True:
        users = out.group_by("user_id").len().filter(pl.col("len") >= k).select("user_id")
        items = out.group_by("item_id").len().filter(pl.col("len") >= k).select("item_id")
        kept = (out.join(users, on="user_id", how="semi", maintain_order="left")
                .join(items, on="item_id", how="semi", maintain_order="left"))
        if kept.height == out.height:
            break
        out = kept
    if out.height == 0:
        raise DataError(f"{source}: the {k}-core on users and items is empty ({interactions.height} interactions "
                        "before filtering); this dataset is too sparse for the recbole protocol")
    return out
