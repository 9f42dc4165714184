"""Plain sequence files -> canonical tables.

Each line is `user item item …` (whitespace-separated): one user a line, items in time order. The file is
`options["file"]` (relative to the dataset folder, or absolute) or the single `*.txt` in the folder.

The files carry no time, so timestamps are synthesised: the j-th item of a user (0-based) is at
2020-01-01 + j days, UTC (`_common.synthetic_ts`). Order within a user is what matters to sequence models and
leave-one-out splits; a global temporal split on these times cuts by position in the sequence.
A user on several lines continues their sequence (the days keep counting).
The catalog is the distinct item ids, without text; event = "interaction".
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mmrec_pipeline.data.schema import DataError, SourceTables
from mmrec_pipeline.data.sources._common import (
    find_single,
    open_text,
    require_dir,
    require_file,
    synthetic_ts,
)


def read(path: Path, options: dict) -> SourceTables:
    folder = require_dir(Path(path), "one sequence file (*.txt, lines of 'user item item …')")
    if options.get("file"):
        file = require_file(folder / options["file"], "the sequence file named in the dataset options")
    else:
        file = find_single(folder, "*.txt", "sequence file (*.txt)")
    users, items, no_items = read_lines(file)
    interactions = pl.DataFrame({"user_id": users, "item_id": items}, schema={"user_id": pl.Utf8, "item_id": pl.Utf8})
    interactions = interactions.with_columns(synthetic_ts("user_id"), pl.lit("interaction").alias("event"))
    tables = SourceTables(items=interactions.select("item_id").unique(maintain_order=True),
                          users=interactions.select("user_id").unique(maintain_order=True),
                          interactions=interactions)
    tables.skip(f"lines with a user but no items in {file.name}", no_items)
    return tables


def read_lines(file: Path) -> tuple[list[str], list[str], int]:
    """Flattened (user, item) pairs in file order, and how many lines named a user without items."""
    users: list[str] = []
    items: list[str] = []
    no_items = 0
    try:
        with open_text(file) as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue  # blank line
                user, seq = fields[0], fields[1:]
                users.extend([user] * len(seq))
                items.extend(seq)
                no_items += not seq
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text: {e}") from None
    if not items:
        raise DataError(f"{file}: no interactions; expected lines of 'user item item …'")
    return users, items, no_items
