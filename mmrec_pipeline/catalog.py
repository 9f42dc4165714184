"""The DuckDB catalog at the lake root: one view per table and dataset, e.g. `"sample"."items"`, and
`"<dataset>".recommendations_readable` (recommendations joined with item titles)."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from mmrec_pipeline.features.families import FEATURES
from mmrec_pipeline.storage import CATALOG, DatasetView, Lake, read_parquet  # noqa: F401 (CATALOG: re-exported)


class CatalogError(RuntimeError):
    """Some tables got no view (the rest of the catalog was refreshed)."""


def quote(identifier: str) -> str:
    """A DuckDB identifier in double quotes, embedded quotes doubled (so no folder name can break the SQL)."""
    return '"' + identifier.replace('"', '""') + '"'


def refresh_catalog(lake: Lake, retries: int = 5) -> int:
    """(Re)create a view for every `<root>/<dataset>/<table>.parquet` and `<root>/<table>.parquet` of a local lake.

    Several step processes may refresh at once; DuckDB allows one writer, so a locked file is retried.
    The catalog is a convenience: callers warn on an error here and never fail a run for it.
    """
    root, catalog = Path(lake.root), lake.catalog
    tables = sorted(root.glob("*/*.parquet")) + sorted(root.glob("*.parquet"))
    for attempt in range(retries):
        try:
            bad = []
            with duckdb.connect(str(catalog)) as con:
                for path in tables:
                    schema = path.parent.name if path.parent != root else "main"
                    try:
                        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                        con.execute(f"CREATE OR REPLACE VIEW {quote(schema)}.{quote(path.stem)} AS "
                                    "SELECT * FROM read_parquet('" + path.as_posix().replace("'", "''") + "')")
                    except duckdb.IOException:
                        raise
                    except duckdb.Error as e:  # one unreadable table must not hide the others
                        bad.append(f"{path}: {str(e).splitlines()[0]}")
                for rec in (p for p in tables if p.name == "recommendations.parquet"):
                    if DatasetView.at(rec.parent).table("items").exists():
                        _readable_recommendations(con, rec.parent.name)
            if bad:
                raise CatalogError(f"no DuckDB view for {len(bad)} table(s): " + "; ".join(bad))
            return len(tables)
        except duckdb.IOException:
            if attempt == retries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return 0


def _readable_recommendations(con, schema: str) -> None:
    """`"<dataset>".recommendations_readable`: each user's top-K with the items' titles and categories."""
    con.execute(f"CREATE OR REPLACE VIEW {quote(schema)}.recommendations_readable AS "
                "SELECT r.user_id, r.rank, r.item_id, i.title, i.category, r.score "
                f"FROM {quote(schema)}.recommendations r LEFT JOIN {quote(schema)}.items i USING (item_id) "
                "ORDER BY r.user_id, r.rank")


# Feature tables (the feature registry's entries), and whether an item needs an image to have the feature.
FEATURE_TABLES = {name: feature.needs_image for name, feature in FEATURES.items()}
# Where a table's value is one column (the entry's `value_columns`): review_summaries also holds counts and raw-review
# vectors, which every item has before its summary is written (a budget-limited run leaves `summary` null).
VALUE_COLUMNS = {name: feature.value_columns for name, feature in FEATURES.items() if feature.value_columns}


def feature_gaps(dataset: DatasetView | Path) -> dict[str, int]:
    """Per feature table of a dataset: how many catalog items have no value in it yet (a new catalog
    version, or a budget-limited backfill not finished). Tables never materialized are not counted."""
    dataset = DatasetView.at(dataset)  # a local Path or a remote UPath underneath
    if not dataset.table("items").exists():
        return {}
    items = read_parquet(dataset.table("items"), columns=["item_id", "image_sha256"])
    gaps = {}
    for table, needs_image in FEATURE_TABLES.items():
        path = dataset.table(table)
        if not path.exists():
            continue
        gaps[table] = items_without_feature(items, read_parquet(path), needs_image, VALUE_COLUMNS.get(table)).height
    return gaps


def items_without_feature(items, feats, needs_image: bool, value_columns: tuple[str, ...] | None = None):
    """Catalog items (with an image, when the feature needs one) that have no non-null value in `feats` (in
    `value_columns`, default every column)."""
    import polars as pl

    values = list(value_columns or [c for c in feats.columns if c != "item_id"])
    have = feats.filter(pl.any_horizontal(pl.col(values).is_not_null())) if values else feats
    eligible = items.filter(pl.col("image_sha256").is_not_null()) if needs_image else items
    return eligible.join(have.select("item_id"), on="item_id", how="anti")
