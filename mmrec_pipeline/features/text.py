"""Text vectors per item: all-MiniLM-L6-v2 over several fields, and GPT-2 BPE input-embedding means.

SBERT fields (column `sbert_<field>`, L2-normalised float32, 384-d):
- `title`, `description`, `text` (title + description);
- with a captions table (columns `caption_<model>`): `caption_<model>` and `title_caption_<model>`
  ("title. caption"), the item representations of the LVLM paper;
- with a summaries table (column `summary`): `summary`, the MMREC paper's review-summary text.

`gpt2_bpe` (768-d for GPT-2 small): the mean of GPT-2's input (token) embeddings over the BPE tokens of title +
description, the item text vector of MM-GPT2Rec. Tokenised with tiktoken over GPT-2's ranks (packaged with
openai-whisper); only the `wte` matrix is read from the GPT-2 safetensors. Kept un-normalised on purpose: it lives
in GPT-2's input-embedding space, which the recommender projects from. Skipped, with the reason in the stats,
when GPT-2 weights are not available.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mmrec_pipeline.compute import Compute, logger
from mmrec_pipeline.features.cache import VECTOR, FeatureCache, compute_incremental, content_key
from mmrec_pipeline.storage import FeatureCacheFolder
from mmrec_pipeline.weights import ModelNotAvailable, ModelSources

GPT2_MAX_TOKENS = 1024  # GPT-2's context length
SBERT_VERSION = "v1"  # bump when the text given to the encoder changes


def join_text(*parts: str | None) -> str | None:
    """'a. b' from the non-empty parts (None when all are empty)."""
    kept = [p.strip().rstrip(".") for p in parts if p and p.strip()]
    return ". ".join(kept) + "." if kept else None


def text_fields(items: pl.DataFrame, captions: pl.DataFrame | None = None,
                summaries: pl.DataFrame | None = None) -> dict[str, list[str | None]]:
    """field name -> text per item (in `items` order)."""
    titles, descs = items["title"].to_list(), items["description"].to_list()
    fields = {"title": [join_text(t) for t in titles], "description": [join_text(d) for d in descs],
              "text": [join_text(t, d) for t, d in zip(titles, descs, strict=True)]}
    if captions is not None:
        cap = items.select("item_id").join(captions, on="item_id", how="left", maintain_order="left")
        for col in [c for c in captions.columns if c.startswith("caption_")]:
            texts = cap[col].to_list()
            fields[col] = [join_text(c) for c in texts]
            fields[f"title_{col}"] = [join_text(t, c) if c else None for t, c in zip(titles, texts, strict=True)]
    if summaries is not None:
        summ = items.select("item_id").join(summaries.select("item_id", "summary"), on="item_id", how="left",
                                            maintain_order="left")
        fields["summary"] = [join_text(s) for s in summ["summary"].to_list()]
    return fields


def load_sbert(sources: ModelSources, device: torch.device):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(sources.resolve("sbert"), device=str(device), trust_remote_code=False)


def _text_key(row: dict) -> str | None:
    return content_key(row["text"]) if row["text"] else None


def sbert_vectors(long: pl.DataFrame, sources: ModelSources, compute: Compute, feature_cache: FeatureCacheFolder,
                  max_items_per_run: int | None, log) -> tuple[pl.DataFrame, dict]:
    """Vectors for a long table (item_id, text): one cache for every field, keyed by the text itself."""
    identity = {"weights": sources.identity("sbert"), "normalize": True, "version": SBERT_VERSION}
    cache = FeatureCache(feature_cache, "text", "sbert", identity, {"vector": VECTOR})

    @functools.cache
    def model():
        return load_sbert(sources, compute.torch_device)

    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        texts = chunk["text"].to_list()
        unique = list(dict.fromkeys(texts))  # encode each distinct text of the chunk once
        vecs = model().encode(unique, batch_size=compute.batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        index = {t: i for i, t in enumerate(unique)}
        return pl.DataFrame({"vector": pl.Series([vecs[index[t]] for t in texts], dtype=VECTOR)})

    # Work in order of text length, then text: batches hold texts of similar length (little padding), and equal
    # texts (a title that is the whole text, colour variants sharing a name and description, empty fields) land
    # in the same chunk, where they are encoded once. The rows go back to the caller's order afterwards.
    ordered = long.with_row_index("_pos").sort(pl.col("text").str.len_chars(), "text", nulls_last=True)
    rows, stats = compute_incremental(ordered, _text_key, compute_fn, cache,
                                      chunk_size=max(512, compute.batch_size * 8), max_items_per_run=max_items_per_run,
                                      log=log, what="text embeddings (sbert)")
    rows = rows.with_columns(ordered["_pos"]).sort("_pos").drop("_pos")
    return rows, stats


# ------------------------------------------------------------------------------------------------------
# GPT-2 BPE


def gpt2_encoding():
    """GPT-2's byte-level BPE as a tiktoken Encoding, from the packaged ranks file (no download)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = load_tiktoken_bpe(str(ModelSources.gpt2_ranks()))
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def gpt2_input_embeddings(sources: ModelSources) -> torch.Tensor:
    """GPT-2's token embedding matrix `wte` [vocab, hidden], read alone from the safetensors (no model built)."""
    from safetensors import safe_open

    source = sources.resolve("gpt2")
    folder = Path(source)
    if not folder.exists():  # a hub id with downloads allowed
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                if name.endswith("wte.weight"):
                    return st.get_tensor(name).float()
    raise ModelNotAvailable(f"model 'gpt2' at {folder}: no 'wte.weight' tensor in {[f.name for f in files]}")


def gpt2_bpe_vectors(items: pl.DataFrame, texts: list[str | None], sources: ModelSources,
                     feature_cache: FeatureCacheFolder,
                     max_items_per_run: int | None, log) -> tuple[pl.Series, dict]:
    identity = {"weights": sources.identity("gpt2"), "ranks": "gpt2.tiktoken", "max_tokens": GPT2_MAX_TOKENS}
    cache = FeatureCache(feature_cache, "text", "gpt2_bpe", identity, {"gpt2_bpe": VECTOR})

    @functools.cache
    def tools():
        return gpt2_encoding(), gpt2_input_embeddings(sources)

    def compute_fn(chunk: pl.DataFrame) -> pl.DataFrame:
        enc, wte = tools()
        out = []
        for text in chunk["text"].to_list():
            ids = [i for i in enc.encode_ordinary(text)[:GPT2_MAX_TOKENS] if i < wte.shape[0]]
            out.append(wte[ids].mean(0).numpy().astype(np.float32) if ids else None)
        return pl.DataFrame({"gpt2_bpe": pl.Series(out, dtype=VECTOR)})

    long = pl.DataFrame({"item_id": items["item_id"], "text": pl.Series(texts, dtype=pl.Utf8)})
    rows, stats = compute_incremental(long, _text_key, compute_fn, cache, chunk_size=2048,
                                      max_items_per_run=max_items_per_run, log=log, what="text embeddings (gpt2_bpe)")
    return rows["gpt2_bpe"], stats


# ------------------------------------------------------------------------------------------------------


def text_embeddings(
    items: pl.DataFrame,
    sources: ModelSources,
    compute: Compute,
    feature_cache: FeatureCacheFolder,
    captions: pl.DataFrame | None = None,
    summaries: pl.DataFrame | None = None,
    gpt2: bool = True,
    max_items_per_run: int | None = None,
    log: logging.Logger | None = None,
) -> tuple[pl.DataFrame, dict]:
    """One row per item: `item_id`, `sbert_<field>` for every field (see module doc), and `gpt2_bpe`."""
    log = logger(log)
    info = log.info
    fields = text_fields(items, captions, summaries)
    n = items.height
    long = pl.DataFrame({
        "item_id": pl.concat([items["item_id"]] * len(fields)) if fields else pl.Series([], dtype=pl.Utf8),
        "text": pl.Series([t for texts in fields.values() for t in texts], dtype=pl.Utf8),
    })
    rows, sbert_stats = sbert_vectors(long, sources, compute, feature_cache, max_items_per_run, log)
    out = items.select("item_id").with_columns(
        rows["vector"].slice(i * n, n).alias(f"sbert_{field}") for i, field in enumerate(fields))
    stats: dict = {"items": n, "fields": list(fields), "sbert": sbert_stats}

    if gpt2:
        try:
            vec, stats["gpt2_bpe"] = gpt2_bpe_vectors(items, fields["text"], sources, feature_cache,
                                                       max_items_per_run, log)
        except ModelNotAvailable as e:
            info(f"text_embeddings: skipping gpt2_bpe: {e}")
            vec, stats["gpt2_bpe"] = pl.Series([None] * n, dtype=VECTOR), {"skipped": str(e)}
        out = out.with_columns(vec.alias("gpt2_bpe"))
    return out, stats
