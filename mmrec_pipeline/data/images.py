"""Checks on item images shared by every reader: does the file exist, does it decode, what is its content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
from PIL import Image, UnidentifiedImageError


def image_sha256(path: str | Path) -> str | None:
    """sha256 of a readable image file, or None if it is missing or does not decode as an image."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError:
        return None
    try:
        with Image.open(p) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return hashlib.sha256(data).hexdigest()


def attach_images(items: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Fill `image_sha256` from `image_path`; a missing or corrupt file nulls both and is counted.

    Policy: an item keeps its row without an image (feature assets count it), because dropping a product
    because its picture is broken would silently change the catalog.
    """
    paths = items["image_path"].to_list()
    hashes, missing, corrupt = [], 0, 0
    for p in paths:
        if p is None:
            hashes.append(None)
            continue
        if not Path(p).is_file():
            missing += 1
            hashes.append(None)
            continue
        h = image_sha256(p)
        corrupt += h is None
        hashes.append(h)
    out = items.with_columns(pl.Series("image_sha256", hashes, dtype=pl.Utf8))
    out = out.with_columns(pl.when(pl.col("image_sha256").is_null()).then(None)
                           .otherwise(pl.col("image_path")).alias("image_path"))
    no_path = sum(p is None for p in paths)
    return out, {"items without an image path": no_path, "items whose image file is missing": missing,
                 "items whose image file is corrupt": corrupt}
