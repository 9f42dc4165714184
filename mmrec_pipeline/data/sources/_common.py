"""Helpers shared by the format readers.

Every helper turns a problem in the input into a `DataError` that names the file and, where it can, the row,
the column and what was expected, so a user can fix the file without reading the code.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from mmrec_pipeline.data.schema import UTC_TS, DataError, to_json

# Readers that invent timestamps (sequence files, RecBole files without a time column) put the j-th
# interaction of each user at SYNTHETIC_START + j days: increasing per user, so "last item" and temporal
# splits keep the file's order.
SYNTHETIC_START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} not found: expected a folder with {expected}")
    return path


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path} not found: expected {expected}")
    return path


def find_single(folder: Path, pattern: str, what: str) -> Path:
    """The one file in `folder` matching `pattern`; zero or several is an error that lists what was found."""
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{folder / pattern} not found: expected one {what} in {folder}")
    names = ", ".join(p.name for p in found)
    raise DataError(f"{folder}: several files match {pattern} ({names}); name the {what} in the dataset options")


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping `*.gz`. A UTF-8 byte-order mark (what spreadsheet programs
    write) is dropped, as polars' CSV reader drops it, so the first column name reads as written."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def open_bytes(path: Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, transparently gunzipping `*.gz`."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def csv_header(path: Path, sep: str = ",", quoting: bool = True) -> list[str]:
    """The header row of a delimited file, read without parsing the rest."""
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        try:
            return next(reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty; expected a header row") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the header row: {e}") from None


def check_columns(path: Path, found: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found columns {found}")


def csv_error(path: Path, exc: Exception, sep: str = ",", quoting: bool = True) -> DataError:
    """A DataError for a file polars could not parse, naming the first line with the wrong number of fields.

    Only called on the error path, so a second pass over the file with the csv module is affordable.
    """
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        with open_text(path) as f:
            reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
            width = len(next(reader))
            for row in reader:
                if row and len(row) != width:
                    return DataError(f"{path}: malformed row at line {reader.line_num}: expected {width} "
                                     f"fields, found {len(row)} ({reason})")
    except (csv.Error, UnicodeDecodeError, StopIteration) as e:
        return DataError(f"{path}: not a readable delimited file: {e} ({reason})")
    return DataError(f"{path}: cannot parse the file: {reason}")


def first_bad(df: pl.DataFrame, raw: str, parsed: str) -> tuple[int, object] | None:
    """(1-based data row, raw value) of the first row where `raw` is set but `parsed` came out null."""
    bad = (df.with_row_index("_row")
           .filter(pl.col(parsed).is_null() & pl.col(raw).is_not_null())
           .select("_row", raw).head(1))
    if bad.height == 0:
        return None
    return int(bad["_row"][0]) + 1, bad[raw][0]


def check_parsed(df: pl.DataFrame, raw: str, parsed: str, path: Path, expected: str) -> None:
    """Raise if any value of column `raw` did not parse (its `parsed` counterpart is null)."""
    hit = first_bad(df, raw, parsed)
    if hit:
        row, value = hit
        raise DataError(f"{path}: column '{raw}', data row {row}: {value!r} does not parse; expected {expected}")


def check_not_null(df: pl.DataFrame, columns: list[str], path: Path) -> None:
    """Ids must be present; a short row (too few fields) also shows up here as a null."""
    for col in columns:
        nulls = df.with_row_index("_row").filter(pl.col(col).is_null())
        if nulls.height:
            raise DataError(f"{path}: column '{col}' is empty in {nulls.height} row(s), first at data row "
                            f"{int(nulls['_row'][0]) + 1}; every row needs a {col}")


def epoch_to_utc(expr: pl.Expr, unit: str) -> pl.Expr:
    """Unix time (seconds or milliseconds, int or float) -> canonical UTC timestamp."""
    per_second = {"s": 1_000_000, "ms": 1_000}[unit]
    return (expr.cast(pl.Float64) * per_second).round().cast(pl.Int64).cast(pl.Datetime("us")) \
        .dt.replace_time_zone("UTC")


def synthetic_ts(user_col: str = "user_id") -> pl.Expr:
    """SYNTHETIC_START + j days for the j-th row (0-based, file order) of each user."""
    j = pl.int_range(pl.len()).over(user_col)
    return (pl.lit(SYNTHETIC_START).cast(UTC_TS) + pl.duration(days=j)).alias("ts")


def attributes_json(df: pl.DataFrame, columns: list[str]) -> pl.Series:
    """One JSON object per row from `columns` (nulls dropped, keys sorted: schema.to_json's convention)."""
    if not columns:
        return pl.Series("attributes", [None] * df.height, dtype=pl.Utf8)
    rows: Iterator[dict] = df.select(columns).iter_rows(named=True)
    return pl.Series("attributes", [to_json(r) for r in rows], dtype=pl.Utf8)
