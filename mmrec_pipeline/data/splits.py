"""Train/valid/test splits (docs/ARCHITECTURE.md "Protocols").

- `temporal`: global cut points at the 75% and 90% timestamp quantiles. Rows at or after the first cut are
  valid, at or after the second are test, so no valid/test row is earlier than any train row.
- `loo`: per user, the last interaction is test and the second last valid (ties in time keep file order).
- `recbole`: RecBole's protocol for comparisons with it and with papers: 5-core on users and items, then `loo`
  (RecDataset then ranks over the items left and keeps users whose test items are all repeats: the history minus
  the test items is masked, so a repeat stays rankable, as RecBole does; see evaluation/protocols.py).

`filter_and_split` applies the dataset's user k-core first. Under `temporal` it counts only rows before the
training cut (the cuts come from every row), so test-period activity cannot decide who is kept; `loo` and `recbole`
keep the published k-core over every row of the user (their cut is per user, the user's last items).
"""

from __future__ import annotations

import polars as pl

from mmrec_pipeline.data.filtering import user_core, user_core_mask, user_item_core
from mmrec_pipeline.data.schema import DataError

TEMPORAL_SHARES = (0.75, 0.15, 0.10)
RECBOLE_CORE = 5


def temporal_cuts(ts: pl.Series) -> tuple:
    """The timestamps at the 75% and 90% positions of the sorted timestamps."""
    s = ts.sort()
    n = s.len()
    return s[int(n * TEMPORAL_SHARES[0])], s[int(n * (TEMPORAL_SHARES[0] + TEMPORAL_SHARES[1]))]


def split_temporal(interactions: pl.DataFrame, cuts: tuple | None = None) -> pl.DataFrame:
    """Labels at the given cuts (default: this table's own `temporal_cuts`)."""
    c1, c2 = cuts or temporal_cuts(interactions["ts"])
    label = (pl.when(pl.col("ts") >= c2).then(pl.lit("test"))
             .when(pl.col("ts") >= c1).then(pl.lit("valid")).otherwise(pl.lit("train")))
    return interactions.with_columns(label.alias("split"))


def split_loo(interactions: pl.DataFrame) -> pl.DataFrame:
    df = interactions.with_row_index("_row").sort(["user_id", "ts", "_row"])
    from_end = pl.int_range(pl.len()).reverse().over("user_id")
    label = pl.when(from_end == 0).then(pl.lit("test")).when(from_end == 1).then(pl.lit("valid")).otherwise(
        pl.lit("train"))
    return df.with_columns(label.alias("split")).sort("_row").drop("_row")


def make_split(interactions: pl.DataFrame, kind: str, cuts: tuple | None = None) -> pl.DataFrame:
    """`cuts`: the temporal split's (train cut, test cut) when they were taken before filtering."""
    if kind == "temporal":
        out = split_temporal(interactions, cuts)
    elif kind == "loo":
        out = split_loo(interactions)
    elif kind == "recbole":  # RecBole's protocol: 5-core on users and items first, then leave-one-out
        out = split_loo(user_item_core(interactions, RECBOLE_CORE))
    else:
        raise DataError(f"unknown split kind '{kind}'; expected 'temporal', 'loo' or 'recbole'")
    counts = dict(out.group_by("split").len().iter_rows())
    missing = [s for s in ("train", "test") if not counts.get(s)]
    if missing:
        raise DataError(f"the {kind} split left no rows in {missing}; the dataset has too few interactions "
                        f"({interactions.height}) or too few distinct timestamps")
    return out


def filter_and_split(interactions: pl.DataFrame, kind: str, min_user_interactions: int,
                     source: str = "interactions") -> tuple[pl.DataFrame, dict]:
    """(split, what the user k-core dropped): the dataset's user filter, then its split (module notes).

    Under `temporal` a user is kept only with `min_user_interactions` rows before the training cut, and the cuts
    are the kept rows' 75% / 90% quantiles. Dropping users moves the cuts, so the two are repeated until no
    further user drops (each round only removes users, so it ends); the split then holds 75/15/10 of its rows and
    no kept user owes their place to valid- or test-period activity. Under `loo` / `recbole` every row counts."""
    cuts = None
    if kind != "temporal":
        kept = user_core(interactions, min_user_interactions, source)
    else:
        # Rounds narrow a row mask; the table is filtered once at the end (a filtered copy per round beside the
        # input set the split stage's memory peak at H&M's full size).
        alive, rounds = pl.repeat(True, interactions.height, eager=True), 0
        while True:
            cuts, rounds = temporal_cuts(interactions["ts"].filter(alive)), rounds + 1
            keep = user_core_mask(interactions, min_user_interactions, source, before=cuts[0], alive=alive)
            if keep.sum() == alive.sum():
                break
            alive = keep
        kept = interactions if alive.all() else interactions.filter(alive)
    users = interactions["user_id"].n_unique()
    dropped = {"users_dropped_by_filter": users - (kept["user_id"].n_unique() if kept is not interactions else users),
               "rows_dropped_by_filter": interactions.height - kept.height,
               "filter_counts": f"rows before the training cut ({rounds} rounds)" if cuts else "every row"}
    return make_split(kept, kind, cuts), dropped


def split_summary(split: pl.DataFrame) -> dict:
    """Figures a user wants to see about a split: counts and shares, cold users and cold items in test."""
    # Aggregations per user and per item, not filtered copies of the table, on the streaming engine: in
    # memory, the group-by on the text user ids was the split's largest cost at H&M's full size
    # (docs/BENCHMARKS.md, "Scale").
    counts = dict(split.group_by("split").len().iter_rows())
    counts = {s: counts.get(s, 0) for s in ("train", "valid", "test")}
    is_train, is_test = pl.col("split") == "train", pl.col("split") == "test"
    users, items = (split.lazy().group_by(key).agg(is_train.any().alias("train"), is_test.any().alias("test"))
                    .collect(engine="streaming") for key in ("user_id", "item_id"))
    return {
        **{f"rows_{s}": n for s, n in counts.items()},
        **{f"share_{s}": round(n / max(split.height, 1), 4) for s, n in counts.items()},
        "users": users.height,
        "items": items.height,
        "test_users": int(users["test"].sum()),
        "test_users_without_train_history": int((users["test"] & ~users["train"]).sum()),
        "test_items": int(items["test"].sum()),
        "test_items_unseen_in_train": int((items["test"] & ~items["train"]).sum()),
    }


def check_temporal_shares(split: pl.DataFrame, tolerance: float = 0.03) -> tuple[bool, dict]:
    shares = split_summary(split)
    got = [shares[f"share_{s}"] for s in ("train", "valid", "test")]
    ok = all(abs(g - e) <= tolerance for g, e in zip(got, TEMPORAL_SHARES))
    return ok, {"shares": got, "expected": list(TEMPORAL_SHARES), "tolerance": tolerance}


def check_no_leak(split: pl.DataFrame) -> tuple[bool, dict]:
    """For a temporal split: no valid/test row is earlier than the latest train row."""
    train_max = split.select(pl.col("ts").filter(pl.col("split") == "train").max()).item()
    early = split.select(((pl.col("split") != "train") & (pl.col("ts") < train_max)).sum()).item() \
        if train_max is not None else 0
    return early == 0, {"train_cut": str(train_max), "valid_or_test_rows_before_cut": early}


def check_items_known(split: pl.DataFrame, items: pl.DataFrame) -> tuple[bool, dict]:
    unknown = split.select("item_id").unique().join(items.select("item_id"), on="item_id", how="anti")
    return unknown.height == 0, {"unknown_items": unknown.height, "examples": unknown["item_id"].head(5).to_list()}
