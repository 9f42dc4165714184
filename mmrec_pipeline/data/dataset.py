"""`RecDataset`: the in-memory, index-based view of a split that models and the evaluator share.

Items are indexed in catalog order (the `items` table sorted by item_id), so the evaluator ranks the whole
catalog, including items nobody bought in train. Users are indexed over the users present in `split`.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np
import polars as pl
import scipy.sparse as sp

from mmrec_pipeline.data.schema import SPLITS


@dataclasses.dataclass
class RecDataset:
    name: str
    items: pl.DataFrame  # catalog, sorted by item_id; row i is item index i
    split: pl.DataFrame  # split table with added columns user_idx, item_idx, t (int64 seconds)
    user_ids: np.ndarray
    protocol: str = "temporal"
    repeats_relevant: bool = False

    @classmethod
    def from_tables(cls, name: str, split: pl.DataFrame, items: pl.DataFrame, protocol: str = "temporal",
                    repeats_relevant: bool = False) -> RecDataset:
        items = items.sort("item_id")
        item_idx = pl.DataFrame({"item_id": items["item_id"], "item_idx": np.arange(items.height, dtype=np.int64)})
        user_ids = np.sort(split["user_id"].unique().to_numpy())
        user_idx = pl.DataFrame({"user_id": user_ids, "user_idx": np.arange(len(user_ids), dtype=np.int64)})
        df = (split.with_row_index("_row")
              .join(item_idx, on="item_id", how="inner").join(user_idx, on="user_id", how="inner")
              .with_columns(pl.col("ts").dt.epoch("s").alias("t"))
              .sort(["user_idx", "t", "_row"]).drop("_row"))
        return cls(name, items, df, user_ids, protocol, repeats_relevant)

    @property
    def n_items(self) -> int:
        return self.items.height

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def rows(self, *stages: str) -> pl.DataFrame:
        return self.split.filter(pl.col("split").is_in(list(stages)))

    @cached_property
    def train(self) -> pl.DataFrame:
        return self.rows("train")

    def sequences(self, *stages: str) -> list[np.ndarray]:
        """Each user's item indices in time order over the given stages (empty array for users without any)."""
        df = self.rows(*stages)
        out = [np.zeros(0, dtype=np.int64) for _ in range(self.n_users)]
        if df.height:
            users = df["user_idx"].to_numpy()
            items = df["item_idx"].to_numpy()
            bounds = np.flatnonzero(np.diff(users)) + 1
            for u, seq in zip(users[np.r_[0, bounds]], np.split(items, bounds)):
                out[u] = seq
        return out

    def train_matrix(self, binary: bool = True) -> sp.csr_matrix:
        """Users × items matrix of training interactions (counts, or 1/0 when binary)."""
        t = self.train
        m = sp.csr_matrix((np.ones(t.height, dtype=np.float32), (t["user_idx"].to_numpy(), t["item_idx"].to_numpy())),
                          shape=(self.n_users, self.n_items))
        if binary:
            m.data[:] = 1.0
        return m

    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train["item_idx"].to_numpy(), minlength=self.n_items).astype(np.float64)

    def eval_inputs(self, stage: str = "test"):
        """Inputs of the shared evaluator for `stage`: history = every interaction in earlier stages,
        relevant = the user's items in `stage`. Users with no history or nothing relevant are left out
        (and counted by the caller from `stage_users`)."""
        from mmrec_pipeline.evaluation.metrics import EvalInputs

        before = SPLITS[: SPLITS.index(stage)]
        history = self.sequences(*before)
        target = self.sequences(stage)
        users, hist, rel = [], [], []
        for u in range(self.n_users):
            if len(target[u]) == 0 or len(history[u]) == 0:
                continue
            relevant = np.unique(target[u])
            if not self.repeats_relevant:
                relevant = np.setdiff1d(relevant, history[u])
            if len(relevant):
                users.append(u)
                hist.append(history[u])
                rel.append(relevant)
        return EvalInputs(n_items=self.n_items, users=np.asarray(users, dtype=np.int64), history=hist,
                          relevant=rel, exclude_history=not self.repeats_relevant)

    def stage_users(self, stage: str) -> int:
        return self.rows(stage)["user_idx"].n_unique()

    def item_text(self) -> list[str]:
        """Title and description of each catalog item, the text the content models read."""
        return [" ".join(x for x in (t, d) if x) for t, d in
                zip(self.items["title"].to_list(), self.items["description"].to_list())]
