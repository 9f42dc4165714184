"""The DuckDB catalog at the lake root: one view per table and dataset, e.g. `"sample"."items"`."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

CATALOG = "lake.duckdb"


def refresh_catalog(root: Path, retries: int = 5) -> int:
    """(Re)create a view for every `<root>/<dataset>/<table>.parquet` and `<root>/<table>.parquet`.

    Several step processes may refresh at once; DuckDB allows one writer, so a locked file is retried.
    """
    root = Path(root)
    tables = sorted(root.glob("*/*.parquet")) + sorted(root.glob("*.parquet"))
    for attempt in range(retries):
        try:
            with duckdb.connect(str(root / CATALOG)) as con:
                for path in tables:
                    schema = path.parent.name if path.parent != root else "main"
                    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    con.execute(f'CREATE OR REPLACE VIEW "{schema}"."{path.stem}" AS '
                                "SELECT * FROM read_parquet('" + path.as_posix().replace("'", "''") + "')")
            return len(tables)
        except duckdb.IOException:
            if attempt == retries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return 0
