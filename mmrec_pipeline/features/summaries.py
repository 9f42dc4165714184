"""LLM review summaries per item (the MMREC paper's text side).

Each item's reviews (review_title + review_text, most recent first, at most `max_reviews`, cut to a token budget)
go to an instruct LM with a chat template; batched greedy decoding writes a one-sentence summary. Items without
reviews get their description instead (`summary_source` says which).

Model: `ModelSources.summarizer`, a Hugging Face instruct model folder/id, or a `.gguf` file. The offline
default is the packaged SmolLM2-135M-Instruct GGUF: loading a GGUF de-quantizes it (~30 s), so the result is
re-saved once as safetensors under `<lake>/_cache/models/` and later loads take well under a second.

Only training-period reviews are read (rows of `split` labelled train): the MMREC model predicts a review's own
rating, so a summary that had read valid/test reviews would leak the label.

Cache key: the review texts used and the training cut (the newest training timestamp); the model key holds the
weights, prompt, `PROMPT_VERSION` and budgets. Refresh policy: a cached summary whose reviews are all still
training reviews of the item is kept until the item's training review set has grown by `refresh_share` of the
reviews it covers or by `refresh_reviews` reviews, so a new catalog version (a later cut) does not re-summarise
every item that got one more review. Each summary records how many reviews it covers (`n_reviews_summarised`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mmrec_pipeline.compute import Compute, logger
from mmrec_pipeline.features.cache import (
    FeatureCache,
    compute_incremental,
    content_key,
)
from mmrec_pipeline.storage import (
    CorruptFileError,
    FeatureCacheFolder,
    exclusive,
    quarantine,
    read_json_file,
    sha256_file,
    sweep_stale_temps,
    write_json,
)
from mmrec_pipeline.weights import ModelSources

PROMPT_VERSION = "2"  # bump with any change to how prompts are built, so summaries are recomputed
CACHE_VERSION = "train-only-1"  # the cache rows carry review ids and counts (the refresh policy reads them)
# Short on purpose: the prompt is read once per item and prefill dominates the cost on CPU, so a shorter
# prompt summarises more items a second (docs/BENCHMARKS.md, "Figures behind settings in the code").
SYSTEM = "Summarise product reviews in one sentence."
PROMPT = "Reviews:\n{reviews}\n\nWhat do the reviewers say about this product?"


@dataclasses.dataclass(frozen=True)
class SummaryConfig:
    prompt: str = PROMPT  # `{reviews}` is replaced by the item's reviews, one per line
    system: str = SYSTEM
    max_new_tokens: int = 32  # one sentence
    max_reviews: int = 4  # most recent first
    max_review_tokens: int = 96  # budget for the reviews in the prompt
    max_batch: int = 64  # larger batches generate faster on CPU (docs/BENCHMARKS.md)
    refresh_share: float = 0.2  # re-summarise when the training reviews grew by this share of those covered …
    refresh_reviews: int = 5  # … or by this many reviews, whichever comes first


def training_reviews(split: pl.DataFrame) -> pl.DataFrame:
    """The rows of the `split` table labelled train: the only reviews a summary may read."""
    if "split" not in split.columns:
        raise ValueError("review summaries read the `split` table (column `split` = train/valid/test), got columns "
                         f"{split.columns}: summarising unsplit interactions would leak valid/test reviews")
    return split.filter(pl.col("split") == "train")


def training_cut(train: pl.DataFrame) -> str:
    """The newest training timestamp (ISO): part of each summary's cache key."""
    return train["ts"].max().isoformat() if train.height else ""


def review_rows(interactions: pl.DataFrame) -> pl.DataFrame:
    """The rows that carry a review, with its text (`review`: title and text) and `review_id`, a hash of user,
    time and text: the same review has the same id in every table and run."""
    reviews = (interactions
               .filter(pl.col("review_text").is_not_null() | pl.col("review_title").is_not_null())
               .with_columns(pl.concat_str([pl.col("review_title").fill_null(""), pl.col("review_text").fill_null("")],
                                           separator=": ").str.strip_chars(": ").alias("review"))
               .filter(pl.col("review").str.len_chars() > 0))
    ids = [content_key(u, t.isoformat(), r)[:16] for u, t, r in reviews.select("user_id", "ts", "review").iter_rows()]
    return reviews.with_columns(pl.Series("review_id", ids, dtype=pl.Utf8))


def item_reviews(items: pl.DataFrame, interactions: pl.DataFrame, max_reviews: int) -> pl.DataFrame:
    """item_id, reviews (list[str], most recent first, at most `max_reviews`), review_ids (theirs), all_ids (of
    every review of the item), n_reviews (all of them). Ids from `review_rows`."""
    reviews = (review_rows(interactions)
               .sort(["item_id", "ts", "user_id"], descending=[False, True, False])
               .group_by("item_id", maintain_order=True)
               .agg(pl.col("review").head(max_reviews).alias("reviews"),
                    pl.col("review_id").head(max_reviews).alias("review_ids"),
                    pl.col("review_id").alias("all_ids"), pl.len().alias("n_reviews")))
    return (items.select("item_id", "description")
            .join(reviews, on="item_id", how="left", maintain_order="left")
            .with_columns(pl.col("n_reviews").fill_null(0).cast(pl.Int64)))


def plan_refresh(per_item: pl.DataFrame, keys: list[str | None], cached: pl.DataFrame,
                 config: SummaryConfig) -> list[tuple[str, str | None]]:
    """Per item (action, cache key to read): `exact` (cached under this key), `keep` (an older summary whose
    reviews are all still training reviews of the item, and the set has not grown past the refresh thresholds),
    `compute` (this key), or `none` (no reviews). `cached`: the store's rows (item_id, key, n_reviews, review_ids)."""
    by_item: dict[str, list[tuple[str, int, set]]] = {}
    for item_id, key, n, ids in cached.select("item_id", "key", "n_reviews", "review_ids").iter_rows():
        by_item.setdefault(item_id, []).append((key, n, set(ids or ())))
    plan = []
    for row, key in zip(per_item.select("item_id", "n_reviews", "all_ids").iter_rows(named=True), keys, strict=True):
        if key is None:
            plan.append(("none", None))
            continue
        older = by_item.get(row["item_id"], [])
        if any(k == key for k, _, _ in older):
            plan.append(("exact", key))
            continue
        current = set(row["all_ids"] or ())
        # only summaries of reviews that are training reviews now: never one that read a valid/test review
        valid = [(n, k) for k, n, ids in older if ids <= current and n <= row["n_reviews"]]
        covered, old_key = max(valid, default=(0, None))
        grown = row["n_reviews"] - covered
        fresh = covered > 0 and grown < config.refresh_reviews and grown < config.refresh_share * covered
        plan.append(("keep", old_key) if fresh else ("compute", key))
    return plan


# ------------------------------------------------------------------------------------------------------
# Model


CHECKSUMS = "checksums.json"  # in a converted folder: every other file's sha256, written last


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    """A GGUF's model and tokenizer, de-quantized, saved as a plain safetensors model folder `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # a de-quantized model cannot be saved with its GGUF config
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _gguf_to_safetensors(gguf: Path, folder: Path, log) -> None:
    """De-quantize a GGUF once and save it as a plain safetensors model folder with its files' sha256
    (atomically: a temp folder, renamed; a failed try, e.g. a full disk, leaves no temp folder behind, and the
    temp of a killed process is swept at the next conversion)."""
    log(f"summaries: converting {gguf.name} to safetensors under {folder} (once; ~30 s)")
    sweep_stale_temps(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _dequantize_gguf(gguf, tmp)
        write_json({f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}, tmp / CHECKSUMS)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _check_converted(folder: Path) -> None:
    """Raises `CorruptFileError` naming the first file of a converted folder that is missing or differs from
    the sha256 recorded at conversion (reading the bytes puts them in the page cache the load then reads)."""
    for name, digest in read_json_file(folder / CHECKSUMS).items():
        try:
            actual = sha256_file(folder / name)
        except FileNotFoundError:
            raise CorruptFileError(folder / name, "missing from the converted summarizer") from None
        if actual != digest:
            raise CorruptFileError(folder / name, f"sha256 {actual} differs from the {digest} recorded at conversion")


def converted_summarizer_dir(sources: ModelSources, feature_cache: FeatureCacheFolder) -> Path:
    """Where the summarizer's GGUF, converted to safetensors, is kept (`FeatureCacheFolder.converted_weights`)."""
    return feature_cache.converted_weights(f"summarizer-{sources.identity('summarizer')}")


def summarizer_source(sources: ModelSources, feature_cache: FeatureCacheFolder, log=None) -> str:
    """The summarizer as transformers loads it: its folder or hub id, or a GGUF's converted folder (converted on
    first use; checked against its checksums on every use, and converted again when corrupt)."""
    source = sources.resolve("summarizer")
    if not source.endswith(".gguf"):
        return source
    folder = converted_summarizer_dir(sources, feature_cache)
    # Two steps starting at once (review summaries, mm_llmrec's SmolLM2) convert it once; the other waits.
    with exclusive(folder, on_wait=lambda: logger(log).info(
            f"summaries: another process is converting {Path(source).name}; waiting for it")):
        _convert_once(Path(source), folder, log)
    return str(folder)


def _convert_once(source: Path, folder: Path, log) -> None:
    """Convert `source` into `folder` unless a whole, uncorrupted conversion is there."""
    if folder.exists() and not (folder / CHECKSUMS).exists():  # converted before checksums were recorded
        logger(log).info(f"summaries: {folder} has no {CHECKSUMS}: converting again")
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists():
        try:
            _check_converted(folder)
        except CorruptFileError as e:
            quarantine(folder, f"converted summarizer: {e}", f"converting {source.name} again", log)
    if not (folder / CHECKSUMS).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _gguf_to_safetensors(source, folder, logger(log).info)


def load_summarizer(sources: ModelSources, compute: Compute, feature_cache: FeatureCacheFolder, log=None,
                    dtype: torch.dtype | None = None):
    """(model, tokenizer) of the instruct LM, ready for batched generation (left padding), in `dtype`
    (default: the compute's inference dtype)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = summarizer_source(sources, feature_cache, log)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    tokenizer.padding_side = "left"  # batched generation continues every row from its last token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, trust_remote_code=False,
                                                 dtype=dtype or compute.inference_dtype
                                                 ).to(compute.torch_device).eval()
    return model, tokenizer


def load_summarizer_model(sources: ModelSources, compute: Compute, feature_cache: FeatureCacheFolder):
    """Just the causal LM behind `summarizer` (e.g. SmolLM2 as a recommender backbone to fine-tune), same loader
    and cache, in the compute's training dtype."""
    model, _ = load_summarizer(sources, compute, feature_cache, dtype=compute.torch_dtype)
    return model


def build_prompts(tokenizer, reviews: list[list[str]], config: SummaryConfig) -> list[str]:
    out = []
    for revs in reviews:
        text = "\n".join(f"- {r}" for r in revs)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: config.max_review_tokens]
        messages = [{"role": "system", "content": config.system},
                    {"role": "user", "content": config.prompt.format(reviews=tokenizer.decode(ids))}]
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


@torch.inference_mode()
def summarize(model, tokenizer, reviews: list[list[str]], config: SummaryConfig, compute: Compute) -> list[str]:
    """One summary per list of reviews; batches of similar prompt length to waste little on padding."""
    prompts = build_prompts(tokenizer, reviews, config)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), config.max_batch):
        idx = order[start:start + config.max_batch]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(compute.torch_device)
        gen = model.generate(**enc, max_new_tokens=config.max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts, strict=True):
            out[i] = " ".join(t.split())  # one line
    return out


# ------------------------------------------------------------------------------------------------------


def review_summaries(
    items: pl.DataFrame,
    split: pl.DataFrame,
    sources: ModelSources,
    compute: Compute,
    feature_cache: FeatureCacheFolder,
    config: SummaryConfig = SummaryConfig(),
    max_items_per_run: int | None = None,
    log: logging.Logger | None = None,
) -> tuple[pl.DataFrame, dict]:
    """One row per item: `item_id`, `summary`, `summary_source` (reviews | description | null), `n_reviews` (the
    item's training reviews), `n_reviews_summarised` (how many of them the summary covers; fewer when a cached
    summary was kept under the refresh policy), `review_ids` (the ids of the reviews the summary read, empty
    for a description; `check_training_only` proves each is a training review of the item).

    `split` is the split table; only its train rows are read. Items whose summary is left for a later run
    (`max_items_per_run`) have a null summary and source."""
    train = training_reviews(split)
    cut = training_cut(train)
    per_item = item_reviews(items, train, config.max_reviews)
    identity = {"weights": sources.identity("summarizer"), "prompt": config.prompt, "system": config.system,
                "prompt_version": PROMPT_VERSION, "max_new_tokens": config.max_new_tokens,
                "max_reviews": config.max_reviews, "max_review_tokens": config.max_review_tokens,
                "dtype": str(compute.inference_dtype), "cache_version": CACHE_VERSION}
    cache = FeatureCache(feature_cache, "summaries", "summarizer", identity,
                         {"summary": pl.Utf8, "n_reviews": pl.Int64, "review_ids": pl.List(pl.Utf8)})
    keys = [content_key(r, cut) if r else None for r in per_item["reviews"].to_list()]
    plan = plan_refresh(per_item, keys, cache.read(log=log), config)
    actions = [a for a, _ in plan]

    @functools.cache  # loaded only if something must be computed
    def lm():
        return load_summarizer(sources, compute, feature_cache, log)

    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        model, tokenizer = lm()
        texts = summarize(model, tokenizer, chunk["reviews"].to_list(), config, compute)
        return pl.DataFrame({"summary": pl.Series([t or None for t in texts], dtype=pl.Utf8),
                             "n_reviews": chunk["n_reviews"], "review_ids": chunk["review_ids"]})

    todo = per_item.with_columns(pl.Series("_key", [k for _, k in plan], dtype=pl.Utf8),
                                 pl.Series("_compute", [a == "compute" for a in actions]))
    rows, stats = compute_incremental(
        todo.filter("_compute").select("item_id", "reviews", "review_ids", "n_reviews", "_key"),
        lambda row: row["_key"], compute_fn, cache, chunk_size=config.max_batch * 4,
        max_items_per_run=max_items_per_run, log=log, what="review summaries")
    new = todo.filter("_compute").select("item_id", "_key").with_columns(rows["summary"], rows["n_reviews"],
                                                                         rows["review_ids"].alias("read_ids"))
    stored = cache.read(todo.filter(~pl.col("_compute") & pl.col("_key").is_not_null())
                        .select("item_id", pl.col("_key").alias("key")), log).rename({"key": "_key"})
    found = pl.concat([new, stored.select("item_id", "_key", "summary", "n_reviews",
                                          pl.col("review_ids").alias("read_ids"))])
    found = found.rename({"n_reviews": "n_reviews_summarised"})
    per_item = todo.join(found.unique(["item_id", "_key"], keep="last"), on=["item_id", "_key"], how="left",
                         maintain_order="left")
    has_reviews = per_item["n_reviews"] > 0
    out = per_item.with_columns(pl.Series("_has", has_reviews)).select(
        "item_id",
        pl.when(pl.col("_has")).then(pl.col("summary")).otherwise(pl.col("description")).alias("summary"),
        pl.when(pl.col("_has") & pl.col("summary").is_not_null()).then(pl.lit("reviews"))
        .when(~pl.col("_has") & pl.col("description").is_not_null()).then(pl.lit("description"))
        .otherwise(pl.lit(None, dtype=pl.Utf8)).alias("summary_source"),
        "n_reviews",
        pl.when(pl.col("summary").is_not_null()).then(pl.col("n_reviews_summarised")).otherwise(0)
        .fill_null(0).cast(pl.Int64).alias("n_reviews_summarised"),
        pl.when(pl.col("_has") & pl.col("summary").is_not_null()).then(pl.col("read_ids"))
        .otherwise(pl.lit([], dtype=pl.List(pl.Utf8))).fill_null([]).alias("review_ids"))
    stats.update({"items": items.height, "with_reviews": int(has_reviews.sum()),
                  "from_description": int((~has_reviews).sum()), "training_cut": cut,
                  # neither a training review nor a description: nothing to summarise, so no value, by design
                  "no_input": int((~has_reviews & per_item["description"].is_null()).sum()),
                  "reused": actions.count("exact"), "kept_stale": actions.count("keep"),
                  "training_reviews": int(per_item["n_reviews"].sum())})
    return out, stats


def raw_review_vectors(items: pl.DataFrame, split: pl.DataFrame, sources: ModelSources, compute: Compute,
                       feature_cache: FeatureCacheFolder, max_reviews: int, log=None) -> tuple[pl.DataFrame, dict]:
    """`item_id`, `sbert_reviews`: the mean all-MiniLM-L6-v2 vector of the same training reviews the summarizer
    reads (the MMREC ablation "raw reviews, no LLM summary"); null for items without training reviews."""
    from mmrec_pipeline.features.text import sbert_vectors

    per_item = item_reviews(items, training_reviews(split), max_reviews)
    long = per_item.select("item_id", pl.col("reviews").alias("text")).explode("text").drop_nulls("text")
    rows, stats = sbert_vectors(long, sources, compute, feature_cache, None, log)
    vecs = long.select("item_id").with_columns(rows["vector"]).drop_nulls("vector")
    means: dict[str, np.ndarray] = {}
    if vecs.height:
        uniq, inverse = np.unique(vecs["item_id"].to_numpy(), return_inverse=True)
        sums = np.zeros((len(uniq), len(vecs["vector"][0])), dtype=np.float64)
        np.add.at(sums, inverse, np.asarray(vecs["vector"].to_list(), dtype=np.float64))
        sums /= np.bincount(inverse, minlength=len(uniq))[:, None]
        means = dict(zip(uniq.tolist(), sums.astype(np.float32), strict=True))
    out = items.select("item_id").with_columns(pl.Series(
        "sbert_reviews", [means[i].tolist() if i in means else None for i in items["item_id"].to_list()],
        dtype=pl.List(pl.Float32)))
    return out, stats


def check_training_only(summaries: pl.DataFrame, split: pl.DataFrame) -> tuple[bool, dict]:
    """Each item's `n_reviews` equals its count of training-period reviews in `split`, no summary covers more
    reviews than that, and every review id a summary read (`review_ids`) is one of the item's training reviews:
    an id of a valid/test review (or of no review in the split) is a failure, named in `leaked_ids`."""
    train = review_rows(training_reviews(split))
    expected = train.group_by("item_id").len("expected")
    joined = summaries.select("item_id", "n_reviews", "n_reviews_summarised").join(
        expected, on="item_id", how="left").with_columns(pl.col("expected").fill_null(0))
    bad = joined.filter((pl.col("n_reviews") != pl.col("expected"))
                        | (pl.col("n_reviews_summarised") > pl.col("n_reviews")))
    meta = {"items": summaries.height, "items_failing": bad.height, "examples": bad.head(5).to_dicts()}
    if "review_ids" not in summaries.columns:  # a table written before summaries carried their review ids
        meta["review_ids"] = "not recorded: counts checked only"
        return bad.height == 0, meta
    read = summaries.select("item_id", "review_ids").explode("review_ids").drop_nulls("review_ids")
    foreign = read.join(train.select("item_id", pl.col("review_id").alias("review_ids")),
                        on=["item_id", "review_ids"], how="anti")
    # stage of each foreign id, for the message (hashing the other stages' reviews only when there is one)
    stages = dict(review_rows(split.filter(pl.col("split") != "train")).select("review_id", "split").iter_rows()
                  ) if foreign.height else {}
    meta.update({"review_ids_read": read.height, "review_ids_not_training": foreign.height,
                 "leaked_ids": [{"item_id": i, "review_id": r, "split": stages.get(r, "not in the split")}
                                for i, r in foreign.head(5).iter_rows()]})
    return bad.height == 0 and foreign.height == 0, meta
