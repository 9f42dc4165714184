"""Per-item feature tables (group `features`). Each computes only the items whose content-addressed cache
key is missing (shared across datasets under `$MMREC_HOME/_cache/features`) and reports computed vs reused."""

import dagster as dg
import polars as pl

from assets import DATASETS, GPU
from assets.metadata import plain, table_preview
from mmrec_pipeline.features.captions import available_caption_models
from mmrec_pipeline.features.captions import captions as caption_items
from mmrec_pipeline.features.image import image_embeddings as embed_images
from mmrec_pipeline.features.summaries import SummaryConfig, raw_review_vectors
from mmrec_pipeline.features.summaries import review_summaries as summarise_reviews
from mmrec_pipeline.features.text import text_embeddings as embed_texts
from mmrec_pipeline.features.vq import MIN_TRAIN_IMAGES, PROFILES, train_or_load_vq_vae
from mmrec_pipeline.features.vq import vq_codes as encode_vq
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import read_parquet
from resources.compute import ComputeResource
from resources.models import ModelSourcesResource
from resources.storage import LakeResource


class FeatureRunConfig(dg.Config):
    max_items_per_run: int = 0  # 0 = no limit; otherwise the rest is left for the next run (the sensor resumes)


def _budget(config: FeatureRunConfig) -> int | None:
    return config.max_items_per_run or None


def _result(table: pl.DataFrame, stats: dict) -> dg.Output[pl.DataFrame]:
    """The table plus computed / reused / remaining / items_per_second per model, flattened for the UI."""
    flat, per_model = {}, [v for v in stats.values() if isinstance(v, dict)]
    for key, value in stats.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    if per_model:  # totals over the models (a single-model feature reports them directly)
        for total in ("computed", "reused", "remaining"):
            flat[total] = sum(m.get(total, 0) for m in per_model if isinstance(m.get(total, 0), int))
    flat = {k: v for k, v in flat.items() if v is not None}  # e.g. items_per_second when nothing was computed
    return dg.Output(table, metadata={**plain(flat), "preview": table_preview(table, max_chars=40)})


@dg.asset(partitions_def=DATASETS, group_name="features", io_manager_key="lake", **GPU)
def image_embeddings(context: dg.AssetExecutionContext, config: FeatureRunConfig, compute: ComputeResource,
                     model_sources: ModelSourcesResource, lake_store: LakeResource,
                     items: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """Pooled CNN features per item image: EfficientNet-Lite0 (packaged) and ResNet18 (when its weights exist)."""
    cache = lake_store.lake().feature_cache()
    table, stats = embed_images(items, model_sources.sources(), compute.settings(), cache,
                                max_items_per_run=_budget(config), log=context.log)
    return _result(table, stats)


@dg.asset(partitions_def=DATASETS, group_name="features", io_manager_key="lake", **GPU)
def captions(context: dg.AssetExecutionContext, config: FeatureRunConfig, compute: ComputeResource,
             model_sources: ModelSourcesResource, lake_store: LakeResource,
             items: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """Product-image descriptions: BLIP-2 and LLaVA-NeXT where their weights are found, and always the offline
    captioner (ImageNet labels + dominant colours + pattern). Budget-limited runs resume where they stopped."""
    sources = model_sources.sources()
    table, stats = caption_items(items, sources, compute.settings(), lake_store.lake().feature_cache(),
                                 models=available_caption_models(sources), max_items_per_run=_budget(config),
                                 log=context.log)
    return _result(table, stats)


@dg.asset(partitions_def=DATASETS, group_name="features", io_manager_key="lake", **GPU)
def review_summaries(context: dg.AssetExecutionContext, config: FeatureRunConfig, compute: ComputeResource,
                     model_sources: ModelSourcesResource, lake_store: LakeResource, items: pl.DataFrame,
                     split: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """One sentence per item summarising its training-period reviews only (instruct LM; packaged SmolLM2
    offline); items without reviews get their description. Also `sbert_reviews`, the mean sentence vector of the
    same raw reviews (the MMREC "no LLM summary" ablation)."""
    summary_config = SummaryConfig(**get_dataset(context.partition_key).models.get("review_summaries", {}))
    sources, settings, cache = model_sources.sources(), compute.settings(), lake_store.lake().feature_cache()
    table, summary_stats = summarise_reviews(items, split, sources, settings, cache,
                                             config=summary_config, max_items_per_run=_budget(config), log=context.log)
    stats = {"summaries": summary_stats}
    raw, stats["raw_review_vectors"] = raw_review_vectors(items, split, sources, settings, cache,
                                                          summary_config.max_reviews, log=context.log)
    return _result(table.join(raw, on="item_id", how="left", maintain_order="left"), stats)


@dg.asset(partitions_def=DATASETS, group_name="features", io_manager_key="lake")
def text_embeddings(context: dg.AssetExecutionContext, config: FeatureRunConfig, compute: ComputeResource,
                    model_sources: ModelSourcesResource, lake_store: LakeResource, items: pl.DataFrame,
                    captions: pl.DataFrame, review_summaries: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """all-MiniLM-L6-v2 vectors of title, description, title + description, each caption, "title. caption" and the
    review summary; GPT-2 BPE embedding means where GPT-2 weights exist."""
    cache = lake_store.lake().feature_cache()
    table, stats = embed_texts(items, model_sources.sources(), compute.settings(), cache, captions=captions,
                               summaries=review_summaries, max_items_per_run=_budget(config),
                               log=context.log)
    return _result(table, stats)


@dg.asset(partitions_def=DATASETS, group_name="features", **GPU, deps=["items"])
def vq_tokenizer(context: dg.AssetExecutionContext, compute: ComputeResource,
                 model_sources: ModelSourcesResource, lake_store: LakeResource) -> dg.MaterializeResult:
    """A VQ-VAE trained on the dataset's own images (kept while its config is unchanged, so codes of existing items
    stay valid); reconstruction PSNR/SSIM on held-out images. Skipped in favour of a pretrained VQGAN if configured."""
    if model_sources.sources().available("vqgan"):
        return dg.MaterializeResult(metadata={"tokenizer": "pretrained VQGAN (MMREC_MODEL_VQGAN); nothing to train"})
    spec = get_dataset(context.partition_key)
    lake = lake_store.lake()
    items = read_parquet(lake.table(spec.name, "items"), columns=["image_path"])
    profile = spec.models.get("vq_vae", {}).get("profile", "demo")
    folder = lake.models(spec.name, "vq_vae")
    images = items["image_path"].drop_nulls().n_unique()
    if images < MIN_TRAIN_IMAGES:  # e.g. MovieLens: no images; vq_codes then writes null codes
        reason = f"{images} item images; a VQ-VAE needs at least {MIN_TRAIN_IMAGES}"
        context.log.warning(f"vq_tokenizer skipped for {spec.name}: {reason}")
        return dg.MaterializeResult(metadata={"skipped": reason, "images": images})
    _, report, trained = train_or_load_vq_vae(items["image_path"].drop_nulls().to_list(), folder, PROFILES[profile],
                                              compute.settings(), log=context.log)
    return dg.MaterializeResult(metadata={"folder": dg.MetadataValue.path(str(folder)), "trained_now": trained,
                                          "profile": profile, **plain({k: v for k, v in report.items()
                                                                       if not isinstance(v, (list, dict))})})


@dg.asset(partitions_def=DATASETS, group_name="features", io_manager_key="lake", **GPU, deps=[vq_tokenizer])
def vq_codes(context: dg.AssetExecutionContext, config: FeatureRunConfig, compute: ComputeResource,
             model_sources: ModelSourcesResource, lake_store: LakeResource,
             items: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """256 image codes (16×16) per item: a pretrained VQGAN when configured, else the dataset's VQ-VAE."""
    lake = lake_store.lake()
    folder = lake.models(context.partition_key, "vq_vae")
    table, stats = encode_vq(items, model_sources.sources(), compute.settings(), lake.feature_cache(), vqvae=folder,
                             max_items_per_run=_budget(config), log=context.log)
    return _result(table, stats)
