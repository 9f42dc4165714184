"""The feature registry: one declaration per feature table (what it reads, where it runs, how it is computed).

`assets/features.py` builds one Dagster asset per entry; the lake's gap counts (`lake.feature_gaps`, read by the
new-items sensor), the completeness checks and the code versions read the same entries. Adding a feature is its
module in `features/` (built on `cache.compute_incremental`) plus one entry here.

The family modules are imported only when a feature is computed, so the lake catalog and the sensor can read
this list without loading torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.storage import DatasetView, FeatureCacheFolder
    from mmrec_pipeline.weights import ModelSources


@dataclasses.dataclass(frozen=True)
class FeatureRun:
    """What a feature computation gets besides its input tables."""

    sources: ModelSources
    compute: Compute
    feature_cache: FeatureCacheFolder  # the lake's shared content-addressed store (`Lake.feature_cache()`)
    dataset: DatasetView  # the dataset's artifacts in the lake (the VQ tokenizer is one)
    overrides: dict  # the dataset's `features:` settings in datasets.yaml
    max_items_per_run: int | None = None  # the rest is left for the next run (the new-items sensor resumes)
    log: logging.Logger | None = None  # or Dagster's context.log


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str  # the asset and table name
    modules: tuple[str, ...]  # the domain modules whose code makes the values (its code version), besides cache
    compute: Callable[..., tuple[pl.DataFrame, dict]]  # (run, **inputs) -> (one row per item, stats)
    description: str
    inputs: tuple[str, ...] = ("items",)  # upstream tables, passed to `compute` by name
    after: tuple[str, ...] = ()  # assets that must run first without being read as tables
    pool: str | None = "gpu"  # "gpu": one step at a time per instance, a GPU per pod on Kubernetes
    long_running: bool = False  # heads a long chain of steps: starts first when steps run side by side
    needs_image: bool = False  # an item without an image cannot have it (gap counts and checks skip such items)
    value_columns: tuple[str, ...] = ()  # the columns whose null means "not computed yet" (default: every column)

    def code(self) -> tuple[ModuleType, ...]:
        return tuple(importlib.import_module(m) for m in (*self.modules, "mmrec_pipeline.features.cache"))


def _image_embeddings(run: FeatureRun, items: pl.DataFrame):
    from mmrec_pipeline.features.image import image_embeddings

    return image_embeddings(items, run.sources, run.compute, run.feature_cache, max_items_per_run=run.max_items_per_run,
                            log=run.log)


def _captions(run: FeatureRun, items: pl.DataFrame):
    from mmrec_pipeline.features.captions import available_caption_models, captions

    return captions(items, run.sources, run.compute, run.feature_cache, models=available_caption_models(run.sources),
                    max_items_per_run=run.max_items_per_run, log=run.log)


def _review_summaries(run: FeatureRun, items: pl.DataFrame, split: pl.DataFrame):
    from mmrec_pipeline.features.summaries import SummaryConfig, raw_review_vectors, review_summaries

    config = SummaryConfig(**{k: v for k, v in run.overrides.get("review_summaries", {}).items()
                              if k != "max_items_per_run"})  # the budget is the run's, not the summarizer's
    table, summary_stats = review_summaries(items, split, run.sources, run.compute, run.feature_cache, config=config,
                                            max_items_per_run=run.max_items_per_run, log=run.log)
    raw, raw_stats = raw_review_vectors(items, split, run.sources, run.compute, run.feature_cache, config.max_reviews,
                                        log=run.log)
    return (table.join(raw, on="item_id", how="left", maintain_order="left"),
            {"summaries": summary_stats, "raw_review_vectors": raw_stats})


def _text_embeddings(run: FeatureRun, items: pl.DataFrame, captions: pl.DataFrame, review_summaries: pl.DataFrame):
    from mmrec_pipeline.features.text import text_embeddings

    return text_embeddings(items, run.sources, run.compute, run.feature_cache, captions=captions,
                           summaries=review_summaries, max_items_per_run=run.max_items_per_run, log=run.log)


def _vq_codes(run: FeatureRun, items: pl.DataFrame):
    from mmrec_pipeline.features.vq import vq_codes

    return vq_codes(items, run.sources, run.compute, run.feature_cache, vqvae=run.dataset.vq_vae,
                    max_items_per_run=run.max_items_per_run, log=run.log)


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("image_embeddings", ("mmrec_pipeline.features.image",), _image_embeddings, needs_image=True, long_running=True,
            description="Pooled CNN features per item image: EfficientNet-Lite0 (packaged) and ResNet18 (when its "
                        "weights exist)."),
    # After image_embeddings: the offline captioner reads the CNN features it cached (steps running side by side
    # would both run the CNN over every image).
    Feature("captions", ("mmrec_pipeline.features.captions", "mmrec_pipeline.features.image"), _captions,
            needs_image=True, after=("image_embeddings",),
            description="Product-image descriptions: BLIP-2 and LLaVA-NeXT where their weights are found, and always "
                        "the offline captioner (ImageNet labels from the EfficientNet-Lite0 features image_embeddings "
                        "stores, so the CNN runs once per image, + dominant colours + pattern). Budget-limited runs "
                        "resume where they stopped."),
    Feature("review_summaries", ("mmrec_pipeline.features.summaries",), _review_summaries, inputs=("items", "split"),
            value_columns=("summary",), long_running=True,
            description="One sentence per item summarising its training-period reviews only (instruct LM; packaged "
                        "SmolLM2 offline); items without reviews get their description. Also `sbert_reviews`, the "
                        "mean sentence vector of the same raw reviews (the MMREC \"no LLM summary\" ablation)."),
    Feature("text_embeddings", ("mmrec_pipeline.features.text",), _text_embeddings, pool=None,
            inputs=("items", "captions", "review_summaries"),
            description="all-MiniLM-L6-v2 vectors of title, description, title + description, each caption, "
                        "\"title. caption\" and the review summary; GPT-2 BPE embedding means where GPT-2 weights "
                        "exist."),
    Feature("vq_codes", ("mmrec_pipeline.features.vq",), _vq_codes, needs_image=True, after=("vq_tokenizer",),
            description="256 image codes (16×16) per item: a pretrained VQGAN when configured, else the dataset's "
                        "VQ-VAE."),
)}
