"""Popularity: the same ranking for everyone, by training interaction counts (global) or by counts in the
last `window_days` before the ranked stage (recent).

The recent window ends where the ranked users' histories end, as every other model's input does: at the training
cut when validation is ranked (fit), at the end of the valid period when test is ranked (`at_stage`, which
`evaluate_model` calls; it reads only the stages before the ranked one)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl
import torch

from mmrec_pipeline.data.schema import SPLITS
from mmrec_pipeline.models.base import Recommender


@dataclasses.dataclass
class PopularityConfig:
    window_days: float | None = None  # None = global counts


VARIANTS = {"global": {}, "recent": {"window_days": 30}}


class Popularity(Recommender):
    name = "popularity"
    stage_counts: torch.Tensor | None = None  # recent counts up to the stage being ranked (`at_stage`)
    Config = PopularityConfig
    variants = VARIANTS

    @classmethod
    def search_space_for(cls, config) -> dict[str, tuple]:
        # The recent variant's window is tuned on validation; the global variant has nothing to tune.
        return {"window_days": (7.0, 14.0, 30.0, 90.0)} if config.window_days is not None else {}

    def fit(self, data, features, compute, log=None) -> dict:
        start = time.perf_counter()
        self.n_items = data.n_items
        self.counts, counted = self.window_counts(data, "train")
        self.stage_counts = None
        return {"seconds": time.perf_counter() - start, "interactions_counted": counted}

    def window_counts(self, data, *stages: str) -> tuple[torch.Tensor, int]:
        """(item counts, rows counted) over the rows of `stages`, in the last `window_days` of them if recent."""
        rows = data.rows(*stages)
        if self.config.window_days is not None and rows.height:
            rows = rows.filter(pl.col("t") > rows["t"].max() - self.config.window_days * 86400)
        counts = np.bincount(rows["item_idx"].to_numpy(), minlength=data.n_items).astype(np.float32)
        return torch.from_numpy(counts), rows.height

    def at_stage(self, data, stage: str) -> None:
        """Before `stage` is ranked: the recent window ends where that stage's histories end (the stages before
        it); the global counts stay the training ones."""
        if self.config.window_days is not None:
            self.stage_counts, _ = self.window_counts(data, *SPLITS[:SPLITS.index(stage)])

    def score(self, users, history) -> torch.Tensor:
        counts = self.counts if self.stage_counts is None else self.stage_counts
        return counts.expand(len(users), -1).clone()

    def state_dict(self):  # the fitted counts: a stage's window is state of the ranking, not of the model
        return {"counts": self.counts}

    def load_state_dict(self, state):
        self.counts, self.stage_counts = state["counts"], None
