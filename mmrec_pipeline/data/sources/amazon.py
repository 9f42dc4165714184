"""Amazon Reviews 2023 (one category) -> canonical tables.

Folder layout (`options["category"]` names the category; without it the single `meta_*.jsonl*` is used)::

    <Category>.jsonl[.gz]        reviews: rating, title, text, images, asin, parent_asin, user_id,
                                 timestamp (Unix ms; seconds in older dumps), helpful_vote, verified_purchase
    meta_<Category>.jsonl[.gz]   items: main_category, title, average_rating, rating_number, features,
                                 description, price, images, videos, store, categories, details, parent_asin, ...
    images/**/<parent_asin>.{jpg,jpeg,png,webp}   optional local images

Items are keyed by `parent_asin` (reviews of colour/size variants belong to the parent product).
All-time aggregates of the meta file (`average_rating`, `rating_number`, and the `details` entries "Best Sellers
Rank" and "Customer Reviews") are dropped here: they are snapshots over every review, test period included, and
any attribute can become a model feature (mmrec_dlrm turns small-cardinality attributes into sparse features).
description = the description paragraphs followed by the feature bullets; category = the most specific entry
of `categories`, else `main_category`; a price that is not a number ("—", "from 3.99") becomes null.

Timestamps: the 2023 release uses Unix milliseconds, older dumps and hand exports seconds. The unit is read from
each value's magnitude (below 1e11 is seconds: 1e11 ms is 1973, 1e11 s the year 5138), or fixed with
`options: {timestamp_unit: s | ms}`. A time before TIMESTAMP_FLOOR (Amazon did not exist) or in the future is
an error naming the line, not a silent 1970 date.

The files are GBs, so they are streamed line by line into column lists. A line that is not JSON, or a review
without user_id / parent_asin / timestamp, is skipped and counted (a line whose only fault is bytes that are not
UTF-8 is decoded with replacement characters and kept, its line number recorded); more than 1% bad lines (and more than 10)
means the file is not what we think it is and raises.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from mmrec_pipeline.data.images import attach_images
from mmrec_pipeline.data.schema import DataError, SourceTables, to_json
from mmrec_pipeline.data.sources._common import epoch_to_utc, find_single, open_bytes, require_dir

try:  # orjson is several times faster on multi-GB files; the standard library is the fallback
    import orjson

    _loads = orjson.loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, UnicodeDecodeError)
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
TIMESTAMP_UNITS = ("auto", "s", "ms")
SECONDS_BELOW = 10**11  # auto: smaller values are seconds
TIMESTAMP_FLOOR = dt.datetime(1994, 7, 1, tzinfo=dt.UTC)  # Amazon's founding
REVIEW_REQUIRED = ("user_id", "parent_asin", "timestamp")
MAX_BAD_FRACTION, MAX_BAD_FREE = 0.01, 10
# `details` entries that are all-time aggregates (ranks and ratings over every review): a leak, dropped at ingest
AGGREGATE_DETAILS = ("best sellers rank", "customer reviews")


def read(path: Path, options: dict) -> SourceTables:
    folder = require_dir(Path(path), "<Category>.jsonl[.gz] reviews and meta_<Category>.jsonl[.gz] (Amazon 2023)")
    meta_file, review_file = find_files(folder, options.get("category"))
    tables = SourceTables(items=pl.DataFrame(), users=pl.DataFrame(), interactions=pl.DataFrame())
    items = read_meta(meta_file, folder / "images", tables)
    items, image_counts = attach_images(items)
    for reason, n in image_counts.items():
        tables.keep(reason, n)
    tables.items = items
    unit = options.get("timestamp_unit", "auto")
    if unit not in TIMESTAMP_UNITS:
        raise DataError(f"option timestamp_unit = {unit!r}; expected one of {TIMESTAMP_UNITS}")
    tables.interactions = read_reviews(review_file, tables, unit)
    tables.users = tables.interactions.select("user_id").unique(maintain_order=True)
    return tables


def find_files(folder: Path, category: str | None) -> tuple[Path, Path]:
    """(meta file, review file) for the category; plain .jsonl wins over .jsonl.gz when both exist."""
    if category is None:
        meta = find_single(folder, "meta_*.jsonl*", "meta_<Category>.jsonl[.gz] file")
        category = meta.name.removeprefix("meta_").split(".jsonl")[0]
    else:
        meta = first_existing(folder, f"meta_{category}", "the item metadata")
    return meta, first_existing(folder, category, "the reviews")


def first_existing(folder: Path, stem: str, what: str) -> Path:
    for suffix in (".jsonl", ".jsonl.gz"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise DataError(f"{folder / (stem + '.jsonl')} not found: expected {what} as {stem}.jsonl or "
                    f"{stem}.jsonl.gz in {folder}")


def json_lines(file: Path, tables: SourceTables) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every JSON object line; bad lines are counted, too many raise. A line with bytes
    that are not UTF-8 (a title saved as latin-1) is decoded with replacement characters and kept, counted with
    its line number."""
    total = bad = number = 0
    first_bad = None
    repaired: list[int] = []
    try:
        with open_bytes(file) as f:  # bytes: a bad UTF-8 sequence spoils one line, not the whole read
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                total += 1
                try:
                    obj = _loads(line)
                except _JSON_ERRORS:
                    obj = _loads_replacing(line)
                    if isinstance(obj, dict):
                        repaired.append(number)
                if not isinstance(obj, dict):
                    bad += 1
                    first_bad = first_bad or number
                    continue
                yield number, obj
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise DataError(f"{file}: cannot read after line {number}: {e}; is the file complete?") from None
    if bad > MAX_BAD_FREE and bad > MAX_BAD_FRACTION * total:
        raise DataError(f"{file}: {bad} of {total} lines are not valid JSON objects (first at line {first_bad}); "
                        f"expected one JSON object per line (JSON Lines)")
    tables.skip(f"malformed JSON lines in {file.name}", bad)
    tables.keep(f"lines of {file.name} with invalid UTF-8, decoded with replacement characters", len(repaired),
                repaired)


def _loads_replacing(line: bytes) -> object:
    """The JSON value of a line that failed to parse, if only its UTF-8 was invalid (error path only)."""
    try:
        line.decode("utf-8")
        return None  # valid UTF-8: the line is not JSON
    except UnicodeDecodeError:
        pass
    try:
        return _loads(line.decode("utf-8", errors="replace"))
    except _JSON_ERRORS:
        return None


def local_images(image_dir: Path) -> dict[str, str]:
    """parent_asin -> absolute image path, the first file in sorted order when several share a stem."""
    if not image_dir.is_dir():
        return {}
    found: dict[str, str] = {}
    for p in sorted(image_dir.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.setdefault(p.stem, str(p.resolve()))
    return found


def parse_price(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip().removeprefix("$").replace(",", "")
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return price if math.isfinite(price) and price >= 0 else None


def text_value(value: object) -> str | None:
    """A field that should be text: a number is written out, anything else (a list, an object, true) is null."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value).strip() or None


def text_list(value: object) -> list[str]:
    """A field that should be a list of strings, tolerating a bare string; another type gives nothing."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [t for t in map(text_value, value) if t]


def read_meta(file: Path, image_dir: Path, tables: SourceTables) -> pl.DataFrame:
    images = local_images(image_dir)
    cols: dict[str, list] = {k: [] for k in ("item_id", "title", "description", "category", "attributes",
                                             "price", "image_path")}
    no_id = 0
    for _, m in json_lines(file, tables):
        asin = m.get("parent_asin")
        if not asin:
            no_id += 1
            continue
        asin = str(asin)
        categories = text_list(m.get("categories"))
        cols["item_id"].append(asin)
        cols["title"].append(text_value(m.get("title")))
        cols["description"].append("\n".join(text_list(m.get("description")) + text_list(m.get("features")))
                                   or None)
        cols["category"].append(categories[-1] if categories else text_value(m.get("main_category")))
        cols["attributes"].append(meta_attributes(m, categories))
        cols["price"].append(parse_price(m.get("price")))
        cols["image_path"].append(images.get(asin))
    tables.skip(f"meta lines missing 'parent_asin' in {file.name}", no_id)
    return pl.DataFrame(cols, schema={"item_id": pl.Utf8, "title": pl.Utf8, "description": pl.Utf8,
                                      "category": pl.Utf8, "attributes": pl.Utf8, "price": pl.Float64,
                                      "image_path": pl.Utf8})


def meta_attributes(m: dict, categories: list[str]) -> str:
    """Structured fields worth keeping; the first remote image URL lets a later step download it. The meta
    file's all-time aggregates are left out (module notes)."""
    images = m.get("images")
    first_image = images[0] if isinstance(images, list) and images else None
    url = (first_image.get("hi_res") or first_image.get("large")) if isinstance(first_image, dict) else None
    return to_json({
        "main_category": m.get("main_category"), "store": m.get("store"),
        "categories": categories or None, "details": without_aggregates(m.get("details")) or None, "image_url": url,
    })


def without_aggregates(details: object) -> object:
    """`details` without its all-time aggregate entries (AGGREGATE_DETAILS, any letter case)."""
    if not isinstance(details, dict):
        return details
    return {k: v for k, v in details.items() if str(k).strip().lower() not in AGGREGATE_DETAILS}


def read_reviews(file: Path, tables: SourceTables, unit: str = "auto") -> pl.DataFrame:
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "ms", "rating", "review_title", "review_text")}
    missing = dict.fromkeys(REVIEW_REQUIRED, 0)
    for number, r in json_lines(file, tables):
        absent = next((k for k in REVIEW_REQUIRED if r.get(k) in (None, "")), None)
        if absent:
            missing[absent] += 1
            continue
        cols["user_id"].append(str(r["user_id"]))
        cols["item_id"].append(str(r["parent_asin"]))
        cols["ms"].append(timestamp_ms(r["timestamp"], file, number, unit))
        cols["rating"].append(rating(r.get("rating"), file, number))
        cols["review_title"].append(text_value(r.get("title")))
        cols["review_text"].append(text_value(r.get("text")))
    for field, n in missing.items():
        tables.skip(f"review lines missing '{field}' in {file.name}", n)
    df = pl.DataFrame(cols, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "ms": pl.Int64, "rating": pl.Float64,
                                    "review_title": pl.Utf8, "review_text": pl.Utf8})
    return df.select("user_id", "item_id", epoch_to_utc(pl.col("ms"), "ms").alias("ts"), "rating",
                     "review_title", "review_text", pl.lit("review").alias("event"))


def timestamp_ms(value: object, file: Path, line: int, unit: str = "auto") -> int:
    """Unix milliseconds of a review's timestamp (ms or s, see the module notes), checked to be plausible."""
    # A timestamp that is present but unreadable is an error, not a skip: silently dropping it would hide a
    # format change (e.g. ISO dates) that affects every row.
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float | str):
        try:
            number = int(float(value))
        except (ValueError, OverflowError):  # "yesterday", "nan", "inf"
            pass
    if number is None:
        raise DataError(f"{file}: line {line}: field 'timestamp' = {value!r} does not parse; expected Unix "
                        f"time in milliseconds (an integer like 1588687728923) or seconds (like 1588687728)")
    seconds = unit == "s" or (unit == "auto" and abs(number) < SECONDS_BELOW)
    ms = number * 1000 if seconds else number
    floor_ms, now_ms = int(TIMESTAMP_FLOOR.timestamp() * 1000), int(time.time() * 1000) + 86_400_000
    if not floor_ms <= ms <= now_ms:
        when = "before " + TIMESTAMP_FLOOR.date().isoformat() if ms < floor_ms else "in the future"
        raise DataError(f"{file}: line {line}: field 'timestamp' = {value!r} read as {'seconds' if seconds else 'ms'} "
                        f"is {when}; expected a review time in Unix ms or seconds (set the dataset option "
                        f"timestamp_unit: s or ms if the unit was misread)")
    return ms


def rating(value: object, file: Path, line: int) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{file}: line {line}: field 'rating' = {value!r} is not a number; expected 1-5") from None
