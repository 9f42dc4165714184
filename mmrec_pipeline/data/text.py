"""Item text as the text-generating models read and write it, and as the report compares generated text to."""

import json

import polars as pl


def item_texts(items: pl.DataFrame) -> list[str]:
    """'title. category. attribute values' per item: what the model reads and writes."""
    out = []
    for title, cat, attrs in zip(items["title"].to_list(), items["category"].to_list(),
                                 items["attributes"].to_list(), strict=True):
        parts = [p for p in (title, cat) if p]
        try:
            values = json.loads(attrs) if attrs else {}
        except json.JSONDecodeError:
            values = {}
        # string values not already in the title, each once (H&M repeats colours across its attribute columns)
        extra = list(dict.fromkeys(v for k, v in values.items() if k != "brand" and isinstance(v, str) and v
                                   and v.lower() not in (title or "").lower()))
        if extra:
            parts.append(", ".join(extra))
        out.append(". ".join(parts))
    return out
