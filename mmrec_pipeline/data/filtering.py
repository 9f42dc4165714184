"""Filters applied before splitting."""

from __future__ import annotations

import polars as pl

from mmrec_pipeline.data.schema import DataError


def user_core(interactions: pl.DataFrame, min_user_interactions: int, source: str = "interactions") -> pl.DataFrame:
    """Keep users with at least `min_user_interactions` interactions (the papers' 5-core on users).

    Only users are filtered: removing rare items too would shrink the catalog the evaluator ranks over.
    """
    counts = interactions.group_by("user_id").len()
    keep = counts.filter(pl.col("len") >= min_user_interactions).select("user_id")
    out = interactions.join(keep, on="user_id", how="semi", maintain_order="left")
    if out.height == 0:
        raise DataError(
            f"{source}: no user has at least {min_user_interactions} interactions "
            f"({interactions.height} interactions, {counts.height} users before filtering); "
            "lower min_user_interactions for this dataset in datasets.yaml")
    return out
