"""The canonical tables every source is read into (docs/ARCHITECTURE.md "Data model and lake").

Tables are polars DataFrames. Every reader returns a `SourceTables`; `validate` is the one place that
checks columns and types, so each reader only has to map its own format onto these names.
"""

from __future__ import annotations

import dataclasses
import json

import polars as pl

UTC_TS = pl.Datetime("us", "UTC")

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "description": pl.Utf8,
    "category": pl.Utf8,
    "attributes": pl.Utf8,  # JSON object as text
    "price": pl.Float64,
    "image_path": pl.Utf8,  # absolute local path, null when the item has no usable image
    "image_sha256": pl.Utf8,
}
USERS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "attributes": pl.Utf8,
}
INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "ts": UTC_TS,
    "rating": pl.Float64,
    "review_title": pl.Utf8,
    "review_text": pl.Utf8,
    "event": pl.Utf8,
}
SPLIT_SCHEMA: dict[str, pl.DataType] = {**INTERACTIONS_SCHEMA, "split": pl.Utf8}
SPLITS = ("train", "valid", "test")
MAX_LINES = 20  # line numbers kept per reason (the count is exact)


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row or field and what was expected."""


@dataclasses.dataclass
class SourceTables:
    """What a reader produces: the three canonical tables plus counts of rows it skipped, and of rows it kept
    but that lack something or were changed (an item without an image, a repaired line), by reason."""

    items: pl.DataFrame
    users: pl.DataFrame
    interactions: pl.DataFrame
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    kept: dict[str, int] = dataclasses.field(default_factory=dict)
    lines: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # per `kept` reason: first line numbers

    def skip(self, reason: str, count: int) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + int(count)

    def keep(self, reason: str, count: int, lines: list[int] | None = None) -> None:
        if count:
            self.kept[reason] = self.kept.get(reason, 0) + int(count)
        if lines:
            self.lines[reason] = (self.lines.get(reason, []) + list(lines))[:MAX_LINES]


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType], table: str, source: str) -> pl.DataFrame:
    """Select and cast `df` to `schema`; optional columns missing from `df` become nulls.

    Required columns (ids, and `ts` for interactions) must be present.
    """
    required = {"items": ["item_id"], "users": ["user_id"], "interactions": ["user_id", "item_id", "ts"],
                "split": ["user_id", "item_id", "ts", "split"]}[table]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{source}: table '{table}' lacks required column(s) {missing}; found {df.columns}")
    cols = []
    for name, dtype in schema.items():
        if name not in df.columns:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
        elif name == "ts" and df.schema[name] != dtype:
            col = pl.col(name)
            if df.schema[name] == pl.Datetime or isinstance(df.schema[name], pl.Datetime):
                col = col.dt.replace_time_zone("UTC") if df.schema[name].time_zone is None else col
                cols.append(col.dt.convert_time_zone("UTC").cast(dtype).alias(name))
            else:
                raise DataError(f"{source}: column 'ts' of '{table}' must be a timestamp, got {df.schema[name]}")
        else:
            cols.append(pl.col(name).cast(dtype).alias(name))
    return df.select(cols)


def validate(tables: SourceTables, source: str) -> SourceTables:
    """Conform the three tables to the canonical schemas and enforce the invariants the pipeline relies on.

    Policy (README "Bad input"): duplicate item ids and null ids are errors; interactions whose item is
    not in the catalog are dropped and counted; users missing from `users` are added.
    """
    items = conform(tables.items, ITEMS_SCHEMA, "items", source)
    users = conform(tables.users, USERS_SCHEMA, "users", source)
    inter = conform(tables.interactions, INTERACTIONS_SCHEMA, "interactions", source)

    if items.height == 0:
        raise DataError(f"{source}: the item catalog is empty")
    if items["item_id"].null_count():
        raise DataError(f"{source}: {items['item_id'].null_count()} item(s) have no item_id")
    dup = items.filter(pl.col("item_id").is_duplicated())["item_id"].unique().sort()
    if dup.len():
        raise DataError(f"{source}: duplicate item_id(s) in the catalog: {dup.head(5).to_list()}"
                        f"{' …' if dup.len() > 5 else ''} ({dup.len()} in all); item ids must be unique")
    bad_ts = inter["ts"].null_count()
    if bad_ts:
        raise DataError(f"{source}: {bad_ts} interaction(s) have no timestamp")
    null_ids = inter.filter(pl.col("user_id").is_null() | pl.col("item_id").is_null()).height
    if null_ids:
        raise DataError(f"{source}: {null_ids} interaction(s) lack a user_id or item_id")

    known = inter["item_id"].is_in(items["item_id"].implode())
    n_unknown = int((~known).sum())
    tables.skip("interactions with an item not in the catalog", n_unknown)
    if n_unknown:  # filtering copies every column: on 30M rows, only when something is dropped
        inter = inter.filter(known)
    if inter.height == 0:
        raise DataError(f"{source}: no interactions left after dropping those with unknown items")

    users = users.unique("user_id", keep="first", maintain_order=True)
    extra = inter.select("user_id").unique().join(users.select("user_id"), on="user_id", how="anti")
    if extra.height:
        users = pl.concat([users, extra.with_columns(pl.lit(None, dtype=pl.Utf8).alias("attributes"))])
    # Sorted by an integer rank of user_id (same order as the text, which a 30M-row multi-column sort would
    # row-encode at ~80 bytes a row); stable, so equal (user, ts) rows keep file order.
    inter = inter.sort(pl.col("user_id").rank("dense"), "ts", maintain_order=True)
    return dataclasses.replace(tables, items=items, users=users, interactions=inter, skipped=dict(tables.skipped))


def to_json(obj: dict) -> str:
    """Attributes are stored as compact JSON text with sorted keys, so equal attributes hash equally."""
    return json.dumps({k: v for k, v in obj.items() if v is not None}, sort_keys=True, ensure_ascii=False)
