"""The content-addressed, incremental feature store shared by every feature family and every dataset.

Layout: each store is a folder the lake names (`FeatureCacheFolder.store`, under `<lake>/_cache/features/`:
`<family>/<model>-<hash of the model identity>/`) holding `part-*.parquet` (+ `key.json`, the identity in
readable form); feature code is handed the lake's `FeatureCacheFolder`, never a path. A row is keyed by (item_id, key) where `key` is a hash of exactly the inputs
that feed the feature (image bytes, text, reviews); the folder is the model key (weights, preprocessing,
prompt version). So the same content under the same model is computed once, whichever dataset asks, and a
changed title, image or prompt is computed again.

`compute_incremental` is the one mechanism every family uses: look up the keys, compute only the missing ones
in chunks, and append each chunk as its own Parquet part, written atomically. A crash loses at most the chunk
in flight; the next run resumes where it stopped. A part's name ends with the start of its sha256, checked on
every read (the bytes are read anyway): a part that does not match or cannot be parsed is moved aside with a
warning naming it (`storage.quarantine`) and its rows are computed again. Runs side by side on one local lake take
turns per chunk (a lock file per store) and skip what the other stored meanwhile, so no item is computed twice; on
object storage (no locks) they may compute a key twice, and reads keep one row per (item_id, key). `compact()`
merges parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from mmrec_pipeline.compute import Progress, logger
from mmrec_pipeline.locks import file_lock
from mmrec_pipeline.storage import (
    CorruptFileError,
    FeatureCacheFolder,
    atomic_write,
    is_local,
    quarantine,
    write_json,
)
from mmrec_pipeline.weights import ModelNotAvailable

KEY_COLUMNS = ["item_id", "key"]
VECTOR = pl.List(pl.Float32)  # how embeddings are stored
AUTO_COMPACT_PARTS = 64  # merge parts when a store has more than this many files
PART_HASH = 32  # hex digits of a part's sha256 kept in its name: enough to catch any corruption
# What polars raises on bytes that are not a Parquet file (truncated, flipped, a zstd frame cut short).
UNREADABLE = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, ValueError)


def content_key(*parts) -> str:
    """sha256 of the given inputs (strings, numbers, None, lists), stable across runs and machines."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


@dataclasses.dataclass
class FeatureCache:
    folder: FeatureCacheFolder  # the lake's shared feature cache, `Lake.feature_cache()`
    family: str  # e.g. "image", "text", "captions"
    model: str  # readable model name, e.g. "efficientnet_lite0"
    identity: dict  # everything that changes the output besides the inputs: weights, preprocessing, prompt
    schema: dict[str, pl.DataType]  # the value columns and their types

    @property
    def model_key(self) -> str:
        return f"{self.model}-{content_key(self.identity)[:16]}"

    @property
    def dir(self) -> Path:
        return self.folder.store(self.family, self.model_key)

    def parts(self) -> list[Path]:
        # Names start with a nanosecond timestamp, so sorted = written order, and "keep last" keeps the newest.
        return sorted(self.dir.glob("part-*.parquet")) if self.dir.exists() else []

    def _empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema={"item_id": pl.Utf8, "key": pl.Utf8, **self.schema})

    def read(self, want: pl.DataFrame | None = None, log=None) -> pl.DataFrame:
        """Stored rows, one per (item_id, key); only those in `want` (item_id, key) when given. A corrupt part is
        moved aside (warning on `log`), so its rows count as missing and are computed again."""
        wanted = None if want is None else want.select(KEY_COLUMNS).unique()
        for attempt in range(3):  # a concurrent compact() may delete a part between listing and reading it
            frames = []
            try:
                for part in self.parts():
                    try:
                        df = self._read_part(part)
                    except CorruptFileError as e:
                        quarantine(part, str(e), "its rows are computed again", log)
                        continue
                    frames.append(df if wanted is None else df.join(wanted, on=KEY_COLUMNS, how="semi"))
            except FileNotFoundError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
                continue
            if not frames:
                return self._empty()
            df = pl.concat(frames, how="vertical_relaxed")
            return df.unique(KEY_COLUMNS, keep="last", maintain_order=True).cast(self.schema)
        raise AssertionError("unreachable")

    def _read_part(self, part: Path) -> pl.DataFrame:
        """One part's rows, its bytes checked against the hash in its name (parts written before hashes were
        recorded have none and are only parsed). Raises `CorruptFileError` naming the file."""
        data = part.read_bytes()
        expected = _part_hash(part)
        if expected and hashlib.sha256(data).hexdigest()[:PART_HASH] != expected:
            raise CorruptFileError(part, "feature cache part whose bytes do not match the sha256 in its name")
        try:
            return pl.read_parquet(io.BytesIO(data), columns=["item_id", "key", *self.schema])
        except UNREADABLE as e:
            raise CorruptFileError(part, f"unreadable feature cache part ({type(e).__name__}: {e})") from e

    def append(self, rows: pl.DataFrame) -> Path:
        """Write `rows` (item_id, key, values…) as one new part, atomically, named with its hash."""
        if not (self.dir / "key.json").exists():
            write_json({"family": self.family, "model": self.model, "identity": self.identity,
                        "columns": {k: str(v) for k, v in self.schema.items()}}, self.dir / "key.json")
        buf = io.BytesIO()
        rows.select(["item_id", "key", *self.schema]).cast(self.schema).write_parquet(buf, compression="zstd")
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()[:PART_HASH]
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-{digest}.parquet"
        return atomic_write(self.dir / name, lambda tmp: tmp.write_bytes(data))

    def stored_keys(self, parts, log=None) -> pl.DataFrame:
        """(item_id, key) of the rows in `parts`, read through the hash check; a part a compaction removed meanwhile
        is skipped (its rows are in the merged part), a corrupt one moved aside (its rows count as missing)."""
        frames = []
        for part in parts:
            try:
                frames.append(self._read_part(part).select(KEY_COLUMNS))
            except FileNotFoundError:
                continue
            except CorruptFileError as e:
                quarantine(part, str(e), "its rows are computed again", log)
        return pl.concat(frames) if frames else pl.DataFrame(schema={"item_id": pl.Utf8, "key": pl.Utf8})

    def computing(self, log: logging.Logger | None = None, what: str = ""):
        """Exclusive use of the store while a chunk is computed and appended, between processes on this machine
        (or a shared POSIX file system); nothing on object storage."""
        if not is_local(self.dir):
            return contextlib.nullcontext()
        self.dir.mkdir(parents=True, exist_ok=True)
        return file_lock(self.dir / ".compute.lock", on_wait=lambda: logger(log).info(
            f"{what or self.model_key}: another run is computing items of this store; waiting for its chunk"))

    def compact(self) -> int:
        """Merge every part into one (duplicates dropped); returns the number of parts merged.

        Crash-safe: the merged part is written before the old ones are deleted, and reads drop duplicates.
        Compactions of one store take turns (`file_lock`), so the second finds the parts already merged and has
        little left to do; object storage has no locks, so there two may race: each deletes only parts it merged,
        so at worst rows are stored twice (reads drop the duplicates).
        """
        if not is_local(self.dir):
            return self._merge()
        with file_lock(self.dir / ".compact.lock"):
            return self._merge()

    def _merge(self) -> int:
        parts = self.parts()
        if len(parts) < 2:
            return 0
        merged = self.read()
        self.append(merged)
        for p in parts:
            p.unlink(missing_ok=True)
        return len(parts)


def _part_hash(part: Path) -> str | None:
    """The hash in a part's name, `part-<time>-<random>-<sha256 prefix>.parquet`; None in an older name."""
    fields = part.name.removesuffix(".parquet").split("-")
    return fields[3] if len(fields) == 4 else None


def compute_incremental(
    items: pl.DataFrame,
    key_fn: Callable[[dict], str | None],
    compute_fn: Callable[[pl.DataFrame], pl.DataFrame],
    cache: FeatureCache,
    chunk_size: int = 256,
    max_items_per_run: int | None = None,
    log: logging.Logger | None = None,
    what: str | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Values for every row of `items`, computing only what the cache lacks.

    - `items`: `item_id` plus whatever columns `key_fn` and `compute_fn` read. Repeated (item_id, key) pairs
      are computed once.
    - `key_fn(row) -> key | None`: the content hash of the row's inputs; None = nothing to compute (e.g. no
      image): the row gets nulls and counts as `missing_input`.
    - `compute_fn(chunk) -> DataFrame` with the value columns of `cache.schema`, one row per chunk row, in
      order. A row whose values are all null counts as `failed` and is not stored (retried next run).
    - `max_items_per_run`: compute at most this many; the rest stay null and are reported as `remaining`.

    Returns (`item_id` + value columns, one row per row of `items` in order; stats).
    """
    t0 = time.perf_counter()
    keys = [key_fn(row) for row in items.iter_rows(named=True)]
    keyed = items.with_columns(pl.Series("key", keys, dtype=pl.Utf8))
    want = keyed.filter(pl.col("key").is_not_null()).unique(KEY_COLUMNS, keep="first", maintain_order=True)
    known = set(cache.parts())  # listed before the read: a part stored after it counts as another run's below
    have = cache.read(want, log)
    missing = want.join(have.select(KEY_COLUMNS), on=KEY_COLUMNS, how="anti", maintain_order="left")
    todo = missing if max_items_per_run is None else missing.head(max(0, max_items_per_run))

    what = what or f"{cache.family}/{cache.model}"
    progress = Progress(what, todo.height, log)
    new, failed, t_compute = [], 0, time.perf_counter()
    by_others = pl.DataFrame(schema={"item_id": pl.Utf8, "key": pl.Utf8})
    for chunk in todo.iter_slices(chunk_size):
        n = chunk.height
        with cache.computing(log, what):
            fresh = set(cache.parts()) - known  # parts another run stored meanwhile: skip their items
            if fresh:
                known |= fresh
                by_others = pl.concat([by_others, cache.stored_keys(fresh, log)])
            if by_others.height:
                chunk = chunk.join(by_others, on=KEY_COLUMNS, how="anti", maintain_order="left")
            if chunk.height:
                ok, chunk_failed = _compute_chunk(chunk, compute_fn, cache)
                failed += chunk_failed
                if ok.height:
                    known.add(cache.append(ok))  # each chunk is durable on its own: a crash loses only this chunk
                    new.append(ok)
        progress.update(n)
    if by_others.height:
        mine = pl.concat(new).select(KEY_COLUMNS) if new else by_others.clear()
        by_others = cache.read(todo.join(by_others, on=KEY_COLUMNS, how="semi")
                               .join(mine, on=KEY_COLUMNS, how="anti"))
        new.append(by_others)
    compute_s = time.perf_counter() - t_compute

    if len(cache.parts()) > AUTO_COMPACT_PARTS:
        cache.compact()

    found = pl.concat([have, *new]) if new else have
    out = (keyed.select(KEY_COLUMNS).with_row_index("_row")
           .join(found, on=KEY_COLUMNS, how="left").sort("_row").drop("_row", "key"))
    computed = todo.height - failed - by_others.height
    stats = {
        "computed": computed,
        "reused": have.height + by_others.height,
        "remaining": missing.height - todo.height,
        "failed": failed,
        "missing_input": keyed.height - keyed["key"].count(),
        "seconds": round(time.perf_counter() - t0, 3),
        "items_per_second": round(computed / compute_s, 2) if computed and compute_s > 0 else None,
        "model_key": cache.model_key,
    }
    return out, stats


def _compute_chunk(chunk: pl.DataFrame, compute_fn: Callable[[pl.DataFrame], pl.DataFrame],
                   cache: FeatureCache) -> tuple[pl.DataFrame, int]:
    """The chunk's stored rows (key columns + values) and how many rows failed (all values null)."""
    values = compute_fn(chunk)
    if values.height != chunk.height:
        raise RuntimeError(f"{cache.family}/{cache.model}: compute_fn returned {values.height} rows "
                           f"for {chunk.height} inputs")
    rows = pl.concat([chunk.select(KEY_COLUMNS), values.select(list(cache.schema)).cast(cache.schema)],
                     how="horizontal")
    ok = rows.filter(~pl.all_horizontal(pl.col(list(cache.schema)).is_null()))
    return ok, rows.height - ok.height


def per_model(
    items: pl.DataFrame,
    models: Sequence[str],
    compute_one: Callable[[str], tuple[pl.Series, dict]],
    column: Callable[[str], str],
    dtype: pl.DataType,
    what: str,
    log: logging.Logger | None = None,
) -> tuple[pl.DataFrame, dict]:
    """`item_id` + one column per model (`column(model)`) for a feature several models compute (image embeddings,
    captions): `compute_one(model) -> (values aligned with items, stats)`, typically one `compute_incremental`
    under the model's own cache key. A model whose weights cannot be found (`ModelNotAvailable`) gets a null column
    and its reason in the stats instead of failing the others."""
    log = logger(log)
    out, stats = items.select("item_id"), {}
    for model in models:
        try:
            values, stats[model] = compute_one(model)
        except ModelNotAvailable as e:
            log.info(f"{what}: skipping {model}: {e}")
            values, stats[model] = pl.Series([None] * items.height, dtype=dtype), {"skipped": str(e)}
        out = out.with_columns(values.alias(column(model)))
    return out, stats


def merge_stats(stats: list[dict]) -> dict:
    """Sum the counts of several `compute_incremental` calls (e.g. one per text field)."""
    out = {k: sum(s.get(k, 0) or 0 for s in stats)
           for k in ("computed", "reused", "remaining", "failed", "missing_input")}
    out["seconds"] = round(sum(s.get("seconds", 0) for s in stats), 3)
    rates = [s["computed"] / s["items_per_second"] for s in stats if s.get("items_per_second")]
    out["items_per_second"] = round(out["computed"] / sum(rates), 2) if rates and sum(rates) > 0 else None
    return out
