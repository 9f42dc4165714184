"""Small helpers that turn domain results into Dagster metadata."""

from __future__ import annotations

import base64
import math

import dagster as dg
import polars as pl

from mmrec_pipeline.evaluation.report import md_table


def table_preview(df: pl.DataFrame, n: int = 5, max_chars: int = 60) -> dg.MetadataValue:
    """The first rows as a Markdown table, long strings shortened."""
    def shown(c: str) -> pl.Expr:
        if isinstance(df.schema[c], (pl.List, pl.Array)):  # vectors and code lists: their length, not values
            return pl.format("[{} values]", pl.col(c).list.len()) if isinstance(df.schema[c], pl.List) else \
                pl.lit(f"[{df.schema[c].size} values]")
        return pl.col(c).cast(pl.Utf8).str.slice(0, max_chars)

    return dg.MetadataValue.md(md_table(df.head(n).with_columns([shown(c).alias(c) for c in df.columns])))


def png_markdown(png: bytes, alt: str = "plot") -> dg.MetadataValue:
    """Dagster has no image metadata type: embed the PNG in Markdown."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


SIGNIFICANT_DIGITS = 4


def rounded(value):
    """A float to `SIGNIFICANT_DIGITS` significant digits (the UI shows every digit it is given:
    `users_per_second 10011.344144036268`); anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def plain(values: dict) -> dict:
    """Numbers (floats rounded) and strings as metadata, everything else as JSON."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or v is None:
            out[k] = dg.MetadataValue.text(str(v))
        elif isinstance(v, (int, float, str)):
            out[k] = rounded(v)
        else:
            out[k] = dg.MetadataValue.json(v)
    return out
