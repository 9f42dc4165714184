"""RecBole atomic files -> canonical tables.

Folder layout (`options["name"]` names the dataset; without it the single `*.inter` file is used)::

    <name>.inter   required: user_id:token  item_id:token  [rating:float]  [timestamp:float]  ...
    <name>.item    optional: item_id:token  movie_title:token_seq  class:token_seq  ...
    <name>.user    optional: user_id:token  age:token  ...

Files are tab-separated without quoting; the header names each field as `name:type` with type one of
token, token_seq, float, float_seq. Sequence types stay space-separated text.

Mapping: title = a column named title / movie_title / item_name / name (else the first containing "title");
category = the first token of class / categories / category / genre; description and price when such columns
exist; every other item or user field goes into `attributes`. ts = `timestamp` in Unix seconds.
Without a timestamp column, timestamps are synthesised: the j-th interaction of each user, in file order,
is at 2020-01-01 + j days (`_common.synthetic_ts`), and a warning is logged.
event = "rating" if there is a rating column, else "interaction".
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from mmrec_pipeline.data.schema import DataError, SourceTables
from mmrec_pipeline.data.sources._common import (
    attributes_json,
    check_not_null,
    check_parsed,
    csv_error,
    csv_header,
    epoch_to_utc,
    find_single,
    require_dir,
    require_file,
    synthetic_ts,
)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_NAMES = ("title", "movie_title", "item_name", "name", "product_name")
CATEGORY_NAMES = ("class", "categories", "category", "genre", "genres")
DESCRIPTION_NAMES = ("description", "desc", "overview")
MAX_SECONDS = 1e11  # the year 5138: anything larger is not Unix seconds
log = logging.getLogger(__name__)


def read(path: Path, options: dict) -> SourceTables:
    folder = require_dir(Path(path), "RecBole atomic files <name>.inter [<name>.item] [<name>.user]")
    name = options.get("name")
    inter_file = (require_file(folder / f"{name}.inter", "the RecBole interactions file") if name
                  else find_single(folder, "*.inter", "RecBole <name>.inter file"))
    stem = inter_file.with_suffix("")
    user_field, item_field = options.get("user_field", "user_id"), options.get("item_field", "item_id")
    interactions = read_inter(inter_file, user_field, item_field, options)
    item_file, user_file = stem.with_suffix(".item"), stem.with_suffix(".user")
    # Without .item the catalog is the items seen; without .user, `validate` adds the users seen.
    items = (read_items(item_file, item_field) if item_file.is_file()
             else interactions.select("item_id").unique(maintain_order=True))
    users = (read_users(user_file, user_field) if user_file.is_file()
             else pl.DataFrame(schema={"user_id": pl.Utf8, "attributes": pl.Utf8}))
    return SourceTables(items=items, users=users, interactions=interactions)


def read_atomic(file: Path, required: list[str]) -> pl.DataFrame:
    """Read one atomic file: names from the `name:type` header, float fields checked row by row."""
    header = csv_header(file, sep="\t", quoting=False)
    names, types = [], {}
    for field in header:
        name, _, kind = field.strip().rpartition(":")
        if not name or kind not in FIELD_TYPES:
            raise DataError(f"{file}: header field {field!r} is not 'name:type' with type one of {FIELD_TYPES}")
        names.append(name)
        types[name] = kind
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}; found columns {names}")
    try:
        # All text first, so a bad number is reported with its row instead of failing the whole parse.
        df = pl.read_csv(file, separator="\t", has_header=False, skip_rows=1, new_columns=names,
                         schema={n: pl.Utf8 for n in names}, quote_char=None)
    except pl.exceptions.PolarsError as e:
        raise csv_error(file, e, sep="\t", quoting=False) from None
    floats = [n for n in names if types[n] == "float"]
    df = df.with_columns(pl.col(n).str.strip_chars().cast(pl.Float64, strict=False).alias(f"_{n}") for n in floats)
    for n in floats:
        check_parsed(df, n, f"_{n}", file, "a number (the header declares it float)")
    return df.with_columns(pl.col(f"_{n}").alias(n) for n in floats).drop(f"_{n}" for n in floats)


def read_inter(file: Path, user_field: str, item_field: str, options: dict) -> pl.DataFrame:
    df = read_atomic(file, [user_field, item_field])
    df = df.rename({user_field: "user_id", item_field: "item_id"})
    check_not_null(df, ["user_id", "item_id"], file)
    rating_field, time_field = options.get("rating_field", "rating"), options.get("time_field", "timestamp")
    if time_field in df.columns:
        check_not_null(df, [time_field], file)
        # NaN, inf or 1e30 would overflow the conversion to a date: name the row instead.
        checked = df.select(time_field, pl.when(pl.col(time_field).abs() < MAX_SECONDS).then(pl.col(time_field))
                            .alias("_checked"))
        check_parsed(checked, time_field, "_checked", file, "Unix time in seconds (a finite number below 1e11)")
        ts = epoch_to_utc(pl.col(time_field), "s").alias("ts")
    else:
        ts = synthetic_ts("user_id")
        log.warning("%s: no '%s' column; timestamps synthesised per user in file order, one day apart "
                    "from 2020-01-01", file, time_field)
    has_rating = rating_field in df.columns
    return df.select(
        "user_id", "item_id", ts,
        (pl.col(rating_field).cast(pl.Float64) if has_rating else pl.lit(None, dtype=pl.Float64)).alias("rating"),
        pl.lit("rating" if has_rating else "interaction").alias("event"),
    )


def first_present(columns: list[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in columns), None)


def read_items(file: Path, item_field: str) -> pl.DataFrame:
    df = read_atomic(file, [item_field]).rename({item_field: "item_id"})
    check_not_null(df, ["item_id"], file)
    title = first_present(df.columns, TITLE_NAMES) or next((c for c in df.columns if "title" in c), None)
    description = first_present(df.columns, DESCRIPTION_NAMES)
    category = first_present(df.columns, CATEGORY_NAMES)
    price = "price" if "price" in df.columns else None
    # The full category list stays in attributes; `category` keeps only its first token.
    attrs = [c for c in df.columns if c not in {"item_id", title, description, price}]

    def text(col: str | None) -> pl.Expr:
        return pl.col(col) if col else pl.lit(None, dtype=pl.Utf8)

    return df.select(
        "item_id",
        text(title).alias("title"),
        text(description).alias("description"),
        text(category).str.strip_chars().str.split(" ").list.first().alias("category"),
        attributes_json(df, attrs),
        (pl.col(price).cast(pl.Float64, strict=False) if price else pl.lit(None, dtype=pl.Float64)).alias("price"),
    )


def read_users(file: Path, user_field: str) -> pl.DataFrame:
    df = read_atomic(file, [user_field]).rename({user_field: "user_id"})
    check_not_null(df, ["user_id"], file)
    return df.select("user_id", attributes_json(df, [c for c in df.columns if c != "user_id"]))
