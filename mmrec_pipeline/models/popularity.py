"""Popularity: the same ranking for everyone, by training interaction counts (global) or by counts in the
last `window_days` of training (recent)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import polars as pl
import torch

from mmrec_pipeline.models.base import Recommender


@dataclasses.dataclass
class PopularityConfig:
    window_days: float | None = None  # None = global counts


VARIANTS = {"global": {}, "recent": {"window_days": 30}}


class Popularity(Recommender):
    name = "popularity"
    Config = PopularityConfig
    variants = VARIANTS

    @classmethod
    def search_space_for(cls, config) -> dict[str, tuple]:
        # The recent variant's window is tuned on validation; the global variant has nothing to tune.
        return {"window_days": (7.0, 14.0, 30.0, 90.0)} if config.window_days is not None else {}

    def fit(self, data, features, compute, log=None) -> dict:
        start = time.perf_counter()
        train = data.train
        if self.config.window_days is not None:
            end = train["t"].max()
            train = train.filter(pl.col("t") > end - self.config.window_days * 86400)
        counts = np.bincount(train["item_idx"].to_numpy(), minlength=data.n_items).astype(np.float32)
        self.n_items = data.n_items
        self.counts = torch.from_numpy(counts)
        return {"seconds": time.perf_counter() - start, "interactions_counted": int(train.height)}

    def score(self, users, history) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def state_dict(self):
        return {"counts": self.counts}

    def load_state_dict(self, state):
        self.counts = state["counts"]
