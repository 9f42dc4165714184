"""H&M Personalized Fashion Recommendations (Kaggle layout) -> canonical tables.

Folder layout::

    articles.csv             one row per article (article_id is a 10-digit, zero-padded string)
    customers.csv            one row per customer (optional: users are then taken from the transactions)
    transactions_train.csv   t_dat (YYYY-MM-DD), customer_id, article_id, price, sales_channel_id
    images/0XX/0XXXXXXXXX.jpg  first three digits of the article id, then the article id

Mapping: title = prod_name, description = detail_desc, category = product_type_name, price = the article's
mean transaction price (null if never bought), ts = t_dat at UTC midnight, event = "purchase".
Identical transaction rows are kept: they are real repeat purchases (several pieces of the same article).
The transactions file has ~30M rows in the real release, so it is scanned lazily with a fixed schema.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mmrec_pipeline.data.images import attach_images
from mmrec_pipeline.data.schema import SourceTables
from mmrec_pipeline.data.sources._common import (
    attributes_json,
    check_columns,
    check_not_null,
    check_parsed,
    csv_error,
    csv_header,
    require_dir,
    require_file,
)

ARTICLES, CUSTOMERS, TRANSACTIONS = "articles.csv", "customers.csv", "transactions_train.csv"
ARTICLE_ATTRIBUTES = [
    "product_group_name", "graphical_appearance_name", "colour_group_name", "perceived_colour_value_name",
    "perceived_colour_master_name", "department_name", "index_name", "index_group_name", "section_name",
    "garment_group_name",
]
ARTICLE_TEXT = {"prod_name": "title", "detail_desc": "description", "product_type_name": "category"}
DATE_FORMAT = "%Y-%m-%d"


def read(path: Path, options: dict) -> SourceTables:
    folder = require_dir(Path(path), f"{ARTICLES}, {CUSTOMERS}, {TRANSACTIONS} and images/ (H&M Kaggle layout)")
    interactions, prices, trimmed = read_transactions(folder / TRANSACTIONS)
    items = read_articles(folder / ARTICLES, folder / "images", prices)
    items, image_counts = attach_images(items)
    users, trimmed_customers = read_customers(folder / CUSTOMERS)
    tables = SourceTables(items=items, users=users, interactions=interactions)
    for reason, n in image_counts.items():
        tables.keep(reason, n)
    tables.keep(f"rows of {TRANSACTIONS} whose customer_id had spaces around it (trimmed)", trimmed)
    tables.keep(f"rows of {CUSTOMERS} whose customer_id had spaces around it (trimmed)", trimmed_customers)
    return tables


def article_id(col: str = "article_id") -> pl.Expr:
    # Ids are kept as text with their leading zero; a file re-saved by a spreadsheet loses it, so pad back.
    return pl.col(col).str.strip_chars().str.zfill(10)


def customer_id() -> pl.Expr:
    # Trimmed, so that " 00a1…" in one file and "00a1…" in the other are one customer; readers count the change.
    return pl.col("customer_id").str.strip_chars()


def read_transactions(file: Path) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Interactions, plus the mean price per article computed in the same pass, and how many customer ids had
    spaces around them."""
    require_file(file, "the H&M transactions (t_dat, customer_id, article_id, price)")
    header = csv_header(file)
    check_columns(file, header, ["t_dat", "customer_id", "article_id"])
    has_price = "price" in header
    # Everything as text except price: ids keep their zeros and dates are parsed with row-level errors.
    overrides = {c: pl.Utf8 for c in header} | ({"price": pl.Float64} if has_price else {})
    # All columns stay in the scan: polars only notices a row with too many fields when every column is
    # projected (sales_channel_id is one small extra column to carry). The date text is replaced by the
    # parsed date right away, so 30M date strings are never held in memory.
    lazy = pl.scan_csv(file, schema_overrides=overrides).with_columns(
        customer_id(),
        (customer_id() != pl.col("customer_id")).alias("_trimmed"),  # a bit per row
        article_id(),
        parse_date().alias("t_dat"),
        (pl.col("price") if has_price else pl.lit(None, dtype=pl.Float64)).alias("price"),
    )
    try:
        df = lazy.collect(engine="streaming")
    except pl.exceptions.PolarsError as e:
        if has_price:
            report_bad_prices(file, header)
        raise csv_error(file, e) from None
    if df["t_dat"].null_count():
        report_bad_dates(file, overrides)
    check_not_null(df, ["customer_id", "article_id"], file)  # a short row shows up as nulls here
    trimmed = int(df["_trimmed"].sum())
    df = df.drop("sales_channel_id", "_trimmed", strict=False).rename({"customer_id": "user_id", "article_id": "item_id"})
    prices = df.group_by("item_id").agg(pl.col("price").mean())
    inter = df.select(
        "user_id", "item_id",
        pl.col("t_dat").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"),
        pl.lit(None, dtype=pl.Float64).alias("rating"),
        pl.lit("purchase").alias("event"),
    )
    return inter, prices, trimmed


def parse_date() -> pl.Expr:
    return pl.col("t_dat").str.strip_chars().str.strptime(pl.Date, DATE_FORMAT, strict=False)


def report_bad_dates(file: Path, overrides: dict) -> None:
    """Error path only: scan the file again, with the raw text, to name the first bad date and its row."""
    df = pl.scan_csv(file, schema_overrides=overrides).select("t_dat", parse_date().alias("_date")).collect()
    check_parsed(df, "t_dat", "_date", file, "a date like 2020-09-22 (YYYY-MM-DD)")
    check_not_null(df, ["t_dat"], file)


def report_bad_prices(file: Path, header: list[str]) -> None:
    """Error path only: read the prices as text to name the first one that is not a number, and its row."""
    try:
        df = pl.read_csv(file, schema_overrides={c: pl.Utf8 for c in header}, columns=["price"])
    except pl.exceptions.PolarsError:
        return  # not a price problem (e.g. a malformed row): csv_error names it
    df = df.with_columns(pl.col("price").str.strip_chars().cast(pl.Float64, strict=False).alias("_price"))
    check_parsed(df, "price", "_price", file, "a number like 0.0508")


def read_articles(file: Path, image_dir: Path, prices: pl.DataFrame) -> pl.DataFrame:
    require_file(file, "the H&M article catalog (article_id, prod_name, detail_desc, ...)")
    header = csv_header(file)
    check_columns(file, header, ["article_id", "prod_name"])
    try:
        df = pl.read_csv(file, infer_schema=False)  # all text: ids keep their zeros, codes stay codes
    except pl.exceptions.PolarsError as e:
        raise csv_error(file, e) from None
    df = df.with_columns(article_id())
    check_not_null(df, ["article_id"], file)
    root = str(image_dir.resolve())
    items = df.select(
        pl.col("article_id").alias("item_id"),
        *[(pl.col(src) if src in df.columns else pl.lit(None, dtype=pl.Utf8)).alias(dst)
          for src, dst in ARTICLE_TEXT.items()],
        attributes_json(df, [c for c in ARTICLE_ATTRIBUTES if c in df.columns]),
        pl.format("{}/{}/{}.jpg", pl.lit(root), pl.col("article_id").str.slice(0, 3), pl.col("article_id"))
        .alias("image_path"),
    )
    return items.join(prices, on="item_id", how="left", maintain_order="left")


def read_customers(file: Path) -> tuple[pl.DataFrame, int]:
    """Customers with their attributes (without the file, `validate` adds bare users from the transactions), and
    how many customer ids had spaces around them."""
    if not file.is_file():
        return pl.DataFrame(schema={"user_id": pl.Utf8, "attributes": pl.Utf8}), 0
    header = csv_header(file)
    check_columns(file, header, ["customer_id"])
    overrides = {"customer_id": pl.Utf8, "postal_code": pl.Utf8, "age": pl.Float64}
    try:
        df = pl.read_csv(file, schema_overrides={k: v for k, v in overrides.items() if k in header})
    except pl.exceptions.PolarsError as e:
        raise csv_error(file, e) from None
    check_not_null(df, ["customer_id"], file)
    if "age" in df.columns:
        df = df.with_columns(pl.col("age").round().cast(pl.Int64))  # ages are whole years; avoid "21.0"
    attrs = [c for c in df.columns if c != "customer_id"]
    users = df.select(customer_id().alias("user_id"), attributes_json(df, attrs))
    return users, int((users["user_id"] != df["customer_id"]).sum())
