"""Per-item feature tables (group `features`), one asset per entry of the feature registry
(`mmrec_pipeline/features/families.py`), plus the VQ tokenizer the codes need. Each computes only the items whose
content-addressed cache key is missing (shared across datasets under `$MMREC_HOME/_cache/features`) and reports
computed vs reused."""

import dagster as dg
import polars as pl

from assets import DATASETS, GPU, op_tags
from assets.automation import CODE_VERSIONS, REFRESH
from assets.metadata import plain, table_preview
from mmrec_pipeline.catalog import VALUE_COLUMNS, items_without_feature
from mmrec_pipeline.compute import pin_feature_dtype
from mmrec_pipeline.features.families import FEATURES, Feature, FeatureRun
from mmrec_pipeline.features.vq import MIN_TRAIN_IMAGES, PROFILES, train_or_load_vq_vae
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import read_parquet
from resources.compute import ComputeResource
from resources.models import ModelSourcesResource
from resources.storage import LakeResource


class FeatureRunConfig(dg.Config):
    max_items_per_run: int = 0  # 0 = no limit; otherwise the rest is left for the next run (the sensor resumes)


def _metadata(table: pl.DataFrame, stats: dict) -> dict:
    """Computed / reused / remaining / items_per_second per model, flattened for the UI, and a preview."""
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
    return {**plain(flat), "preview": table_preview(table, max_chars=40)}


def completeness(feature: Feature, table: pl.DataFrame, items: pl.DataFrame, meta: dict) -> dg.AssetCheckResult:
    """`<feature>_complete`: passes when no item failed and every item without a value is one a budget-limited run
    left for later (the `items_missing_features` sensor resumes that backfill; its runs' tags say how far it is) or
    one with nothing to compute from (`no_input`: a review summary of an item with neither a training review nor a
    description); ERROR when items failed, WARN when more items lack a value than the run left for later."""

    def total(name: str) -> int:
        return sum(int(v) for k, v in meta.items() if k == name or k.endswith(f".{name}"))

    failed, no_input = total("failed"), total("no_input")  # no_input: items with nothing to compute from
    missing = items_without_feature(items, table, feature.needs_image, VALUE_COLUMNS.get(feature.name))
    remaining = int(meta.get("remaining", 0) or 0)
    ok, budget_left = failed == 0 and missing.height <= remaining + no_input, remaining > 0 and failed == 0
    left = max(missing.height - no_input, 0)
    description = ("complete" if missing.height == 0 else
                   "items failed or were left without a value" if not ok else
                   f"{left} items left for the backfill by this budget-limited run" if not no_input else
                   f"{min(no_input, missing.height)} items with nothing to compute from, {left} left for the backfill")
    return dg.AssetCheckResult(
        check_name=f"{feature.name}_complete", passed=ok,
        severity=dg.AssetCheckSeverity.WARN if budget_left else dg.AssetCheckSeverity.ERROR,
        metadata={"failed": failed, "items_without_value": missing.height, "remaining_reported": remaining,
                  "no_input": no_input,
                  "examples": dg.MetadataValue.json(missing["item_id"].head(5).to_list())},
        description=description)


def feature_asset(feature: Feature) -> dg.AssetsDefinition:
    """The asset of one feature registry entry: reads `feature.inputs`, computes the missing items' values."""

    @dg.asset(name=feature.name, ins={k: dg.AssetIn(k) for k in feature.inputs}, deps=list(feature.after),
              partitions_def=DATASETS, group_name="features", io_manager_key="lake", pool=feature.pool,
              op_tags=op_tags(feature.pool, feature.long_running), description=feature.description,
              automation_condition=REFRESH, code_version=CODE_VERSIONS[feature.name],
              # The check runs in the asset's own step: one process start less per feature (local executor).
              check_specs=[dg.AssetCheckSpec(f"{feature.name}_complete", asset=feature.name,
                                             description=f"No item failed, and every item without {feature.name} "
                                                         "is one a budget-limited run left for the backfill")])
    def _feature(context: dg.AssetExecutionContext, config: FeatureRunConfig, compute: ComputeResource,
                 model_sources: ModelSourcesResource, lake_store: LakeResource, **inputs: pl.DataFrame):
        spec, lake = get_dataset(context.partition_key), lake_store.lake()
        # The run's budget, else the dataset's (`features: {<feature>: {max_items_per_run: N}}`, e.g. sample's demo
        # budget on review summaries; the `items_missing_features` sensor runs the rest later).
        budget = config.max_items_per_run or spec.features.get(feature.name, {}).get("max_items_per_run")
        artifacts = lake.dataset_view(spec.name)
        settings = pin_feature_dtype(compute.settings(), artifacts.feature_dtype, context.log)
        run = FeatureRun(model_sources.sources(), settings, lake.feature_cache(), artifacts,
                         spec.features, budget or None, context.log)
        table, stats = feature.compute(run, **inputs)
        meta = _metadata(table, stats)
        yield dg.Output(table, metadata=meta)
        yield completeness(feature, table, inputs["items"], meta)

    return _feature


feature_assets = [feature_asset(f) for f in FEATURES.values()]


@dg.asset(partitions_def=DATASETS, group_name="features", **GPU, deps=["items"], automation_condition=REFRESH,
          code_version=CODE_VERSIONS["vq_tokenizer"])
def vq_tokenizer(context: dg.AssetExecutionContext, compute: ComputeResource,
                 model_sources: ModelSourcesResource, lake_store: LakeResource) -> dg.MaterializeResult:
    """A VQ-VAE trained on the dataset's own images (kept while its config is unchanged, so codes of existing items
    stay valid); reconstruction PSNR/SSIM on held-out images. Skipped in favour of a pretrained VQGAN if configured."""
    if model_sources.sources().available("vqgan"):
        return dg.MaterializeResult(metadata={"tokenizer": "pretrained VQGAN (MMREC_MODEL_VQGAN); nothing to train"})
    spec = get_dataset(context.partition_key)
    lake = lake_store.lake()
    artifacts = lake.dataset_view(spec.name)
    items = read_parquet(artifacts.table("items"), columns=["image_path"])
    profile = spec.features.get("vq_vae", {}).get("profile", "demo")
    folder = artifacts.vq_vae
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
