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

# The columns of the split table that `RecDataset` reads. A consumer that needs no others loads only these: at H&M's
# full size the rest (all-null ratings and reviews, the constant `event`) would hold gigabytes for nothing.
SPLIT_COLUMNS = ("user_id", "item_id", "ts", "split")
STAGE = pl.Enum(SPLITS)  # RecDataset.split's `split` column


def index_of(sorted_ids: pl.Series, ids: pl.Series) -> np.ndarray:
    """Each of `ids`' position in `sorted_ids` (sorted, distinct) by binary search, -1 where it is not there."""
    if sorted_ids.len() == 0:
        return np.full(ids.len(), -1, dtype=np.int64)
    pos = sorted_ids.search_sorted(ids).clip(upper_bound=sorted_ids.len() - 1)
    return np.where((sorted_ids.gather(pos) == ids).to_numpy(), pos.to_numpy().astype(np.int64), -1)


@dataclasses.dataclass
class RecDataset:
    name: str
    items: pl.DataFrame  # catalog, sorted by item_id; row i is item index i
    # the split table with user_idx, item_idx and t (int64 seconds) in place of the text ids, sorted by user, time
    split: pl.DataFrame
    user_ids: np.ndarray  # user_ids[user_idx] is the user's id
    protocol: str = "temporal"
    repeats_relevant: bool = False

    @classmethod
    def from_tables(cls, name: str, split: pl.DataFrame | pl.LazyFrame, items: pl.DataFrame, protocol: str = "temporal",
                    repeats_relevant: bool = False) -> RecDataset:
        """Under the `recbole` protocol the catalog is remapped to the items left in the (5-core) split, the
        pool RecBole ranks; otherwise it is the whole catalog. A lazy `split` is read here, and its text ids are
        freed when this returns."""
        if isinstance(split, pl.LazyFrame):
            split = split.collect()
        if protocol == "recbole":
            items = items.join(split.select("item_id").unique(), on="item_id", how="semi")
        items = items.sort("item_id")
        # Integer indices by binary search, without joins or a rank over the text ids (either copies or hashes
        # every row, which set the memory peak at H&M's full size: docs/BENCHMARKS.md, "Scale"): users in
        # the split's sorted distinct ids, items in the sorted catalog. The text ids and the datetime are then
        # dropped (`t` replaces it) and the stage is an enum (1 byte a row, not a 16-byte string view); rows whose
        # item is not in the catalog too. A stable sort keeps file order among equal (user, time).
        item_idx = index_of(items["item_id"], split["item_id"])
        known = pl.Series(item_idx >= 0)
        users = split["user_id"].filter(known).unique().sort()
        df = split.with_columns(pl.Series("item_idx", item_idx),
                                users.search_sorted(split["user_id"]).cast(pl.Int64).alias("user_idx"),
                                pl.col("ts").dt.epoch("s").alias("t"),
                                pl.col("split").cast(STAGE)).drop("user_id", "item_id", "ts")
        if not known.all():
            df = df.filter(known)
        # numpy's lexsort is stable; the canonical tables are sorted already, and then nothing is copied
        order = np.lexsort((df["t"].to_numpy(), df["user_idx"].to_numpy()))
        if not np.array_equal(order, np.arange(len(order))):
            df = df[order]
        return cls(name, items, df, users.to_numpy(), protocol, repeats_relevant)

    def valid_as_train(self) -> RecDataset:
        """This dataset with its valid rows trained on (the refit protocol: nothing left to validate on)."""
        stage = pl.when(pl.col("split") == "valid").then(pl.lit("train")).otherwise(pl.col("split"))
        return dataclasses.replace(self, split=self.split.with_columns(stage.cast(STAGE).alias("split")))

    def ids(self, df: pl.DataFrame) -> pl.DataFrame:
        """`df`'s user_idx and item_idx as the text `user_id` and `item_id` they stand for."""
        return pl.DataFrame([pl.Series("user_id", self.user_ids).cast(pl.Utf8).gather(df["user_idx"]),
                             self.items["item_id"].cast(pl.Utf8).gather(df["item_idx"])])

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

    def eval_inputs(self, stage: str = "test", cold: bool = False):
        """Inputs of the shared evaluator for `stage`: history = every interaction in earlier stages,
        relevant = the user's items in `stage`, with the accounting of the stage's users left out and why.

        - users without history cannot be scored by a history-based model: dropped (`no_history`);
        - without `repeats_relevant`, items already in the history are not relevant; a user left with none is
          dropped (`all_repeats`), except under the `recbole` protocol, which keeps every item relevant and every
          user in the average and, as RecBole's full-sort evaluator does, masks the history minus the user's
          test items (a repeat can be hit);
        - `cold`: only items never seen in training are relevant (the cold-start protocol); a user with none is
          dropped (`no_cold_item`).
        """
        from mmrec_pipeline.evaluation.metrics import EvalInputs

        before = SPLITS[: SPLITS.index(stage)]
        history = self.sequences(*before)
        target = self.sequences(stage)
        unseen = self.train_counts() == 0
        keep_repeats = self.repeats_relevant or self.protocol == "recbole"
        users, hist, rel = [], [], []
        dropped = {"no_history": 0, "all_repeats": 0, "no_cold_item": 0}
        for u in range(self.n_users):
            if len(target[u]) == 0:
                continue
            if len(history[u]) == 0:
                dropped["no_history"] += 1
                continue
            relevant = np.unique(target[u])
            if not keep_repeats:
                relevant = np.setdiff1d(relevant, history[u])
                if len(relevant) == 0:
                    dropped["all_repeats"] += 1
                    continue
            if cold:
                relevant = relevant[unseen[relevant]]
                if len(relevant) == 0:
                    dropped["no_cold_item"] += 1
                    continue
            users.append(u)
            hist.append(history[u])
            rel.append(relevant)
        mask = [np.setdiff1d(h, r) for h, r in zip(hist, rel)] if self.protocol == "recbole" else None
        return EvalInputs(n_items=self.n_items, users=np.asarray(users, dtype=np.int64), history=hist,
                          relevant=rel, exclude_history=not self.repeats_relevant, mask=mask,
                          stage_users=sum(len(t) > 0 for t in target),
                          dropped={k: v for k, v in dropped.items() if v})

    def stage_users(self, stage: str) -> int:
        return self.rows(stage)["user_idx"].n_unique()

    def item_text(self) -> list[str]:
        """Title and description of each catalog item, the text the content models read."""
        return [" ".join(x for x in (t, d) if x) for t, d in
                zip(self.items["title"].to_list(), self.items["description"].to_list())]
