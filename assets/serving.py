"""Group `serving`: the `champion` (best on validation) and its `recommendations` (top-K per active user), with
their checks. Domain logic: `mmrec_pipeline/serving.py`."""

import dagster as dg
import polars as pl

from assets import DATASETS
from assets.automation import NIGHTLY_FRESHNESS, NIGHTLY_REFRESH, REFRESH
from assets.evaluation import read_per_user
from assets.metadata import plain, png_markdown, table_preview
from assets.models import model_assets
from assets.ranker import FEATURE_TABLES as RANKER_TABLES
from assets.ranker import RANKER_SPLIT_COLUMNS
from mmrec_pipeline import serving
from mmrec_pipeline.catalog import refresh_catalog
from mmrec_pipeline.compute import peak_rss_gb
from mmrec_pipeline.evaluation.protocols import valid_on_shared_users
from mmrec_pipeline.evaluation.report import md_table, plot_drift
from mmrec_pipeline.models import MODELS, ranker
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import read_parquet, scan_parquet
from mmrec_pipeline.versions import code_version
from resources.compute import ComputeResource
from resources.models import ModelSourcesResource
from resources.storage import LakeResource

# The feature tables each model asset reads (its inputs other than split and items).
FEATURES_OF = {a.key.path[-1]: sorted(k.path[-1] for k in a.dependency_keys if k.path[-1] not in ("split", "items"))
               for a in model_assets}
FEATURE_TABLES = sorted({t for tables in FEATURES_OF.values() for t in tables} | set(RANKER_TABLES))
CHECKS = {
    "k_items_per_active_user": "every active user has K recommendations",
    "no_unknown_items": "every recommended item id is in the catalog",
    "no_history_items": "no user is recommended an item from their history (unless the dataset counts repeats)",
    "champion_beats_popularity": "the champion's validation NDCG@10 is above popularity's",
    "drift_within_bound": "the share of users whose top-10 changed since the previous run is within the bound",
}


def _config(dataset: str) -> serving.ServingConfig:
    return serving.ServingConfig.from_overrides(get_dataset(dataset).serving)


@dg.asset(partitions_def=DATASETS, group_name="serving", io_manager_key="lake",
          code_version=code_version(serving.validation_ranking, valid_on_shared_users), automation_condition=REFRESH)
def champion(context: dg.AssetExecutionContext, lake_store: LakeResource,
             metrics: pl.DataFrame) -> dg.Output[pl.DataFrame]:
    """Every model/variant ranked by validation NDCG@10 (full ranking, `<protocol>@valid`), test next to it;
    `champion` marks the best on validation, or the model pinned by `serving: {champion: ...}`."""
    spec = get_dataset(context.partition_key)
    # Per-user values: every model is compared with the two-stage ranker on the users it was validated on.
    ranking = serving.validation_ranking(metrics, spec.split, read_per_user(lake_store.lake(), spec.name, metrics))
    best = serving.choose_champion(ranking, _config(spec.name).champion)
    table = ranking.with_columns(((pl.col("model") == best["model"]) & (pl.col("variant") == best["variant"]))
                                 .alias("champion"))
    return dg.Output(table, metadata={
        "champion": f"{best['model']}/{best['variant']}", **plain({k: v for k, v in best.items()
                                                                   if k not in ("model", "variant")}),
        "ranking": dg.MetadataValue.md(f"NDCG@10, full-catalog ranking; chosen on `{spec.split}@valid`, "
                                       f"`test` shown only for reference.\n\n" + md_table(table.head(20)))})


@dg.asset(partitions_def=DATASETS, group_name="serving", deps=["split", *FEATURE_TABLES],
          code_version=code_version(serving, serving.ServingConfig, ranker), automation_condition=NIGHTLY_REFRESH,
          freshness_policy=NIGHTLY_FRESHNESS,
          check_specs=[dg.AssetCheckSpec(name, asset="recommendations", description=d) for name, d in CHECKS.items()])
def recommendations(context: dg.AssetExecutionContext, compute: ComputeResource, lake_store: LakeResource,
                    model_sources: ModelSourcesResource, champion: pl.DataFrame,
                    items: pl.DataFrame) -> dg.MaterializeResult:
    """The champion retrained on every interaction (its validation-chosen epoch count), top-K items with score
    and rank for every user active in the recent window: `recommendations.parquet`, DuckDB view
    `"<dataset>".recommendations_readable` (with titles). Drift against the previous run in the metadata."""
    spec = get_dataset(context.partition_key)
    config = _config(spec.name)
    best = champion.filter(pl.col("champion")).row(0, named=True)
    lake = lake_store.lake()
    artifacts = lake.dataset_view(spec.name)

    def tables(names) -> dict[str, pl.DataFrame]:
        # the feature tables an asset reads; one a model needs but lacks fails its fit with MissingFeature
        return {t: read_parquet(artifacts.table(t)) for t in names if artifacts.table(t).exists()}

    checkpoint = artifacts.model(best["model"]).variant(best["variant"])
    # only the split columns the retrained models read, as their assets load them
    columns = RANKER_SPLIT_COLUMNS if best["model"] == ranker.NAME else list(MODELS[best["model"]].split_columns)
    split = scan_parquet(artifacts.table("split"), columns=columns)
    if best["model"] == ranker.NAME:  # every source retrained, then the saved booster over their candidates
        _, meta = ranker.load_variant(checkpoint)
        source_models = {}
        for source, name in meta["sources"].items():
            model, variant = name.split("/", 1)
            source_models[source] = (MODELS[model], artifacts.model(model).variant(variant), tables(FEATURES_OF[model]))
        facts = serving.serve_ranker(checkpoint, source_models, split, items, spec.name, spec.split,
                                     spec.repeats_relevant, tables(RANKER_TABLES), compute.settings(), artifacts,
                                     config, log=context.log, sources=model_sources.sources(),
                                     feature_cache=lake.feature_cache())
    else:
        facts = serving.serve(MODELS[best["model"]], checkpoint, split, items, spec.name, spec.split,
                              spec.repeats_relevant, tables(FEATURES_OF[best["model"]]), compute.settings(),
                              artifacts, config, log=context.log, sources=model_sources.sources(),
                              feature_cache=lake.feature_cache())
    if lake.local:  # no DuckDB catalog on a remote lake (DuckDB's httpfs is not installed)
        try:
            refresh_catalog(lake)
        except Exception as e:  # noqa: BLE001 - the catalog is a convenience; the table is written
            context.log.warning(f"DuckDB catalog not refreshed: {e}")
    recs, data = read_parquet(facts["path"]), facts["data"]
    change = serving.drift(recs, facts["previous"], data.n_items)
    entry = {"champion": f"{best['model']}/{best['variant']}", "champion_valid_ndcg@10": best["valid"],
             **change}
    history = serving.append_history(artifacts.drift_log, entry)
    checks = serving.check_recommendations(recs, data, serving.active_users(data, config.active_days), config.k)
    checks["champion_beats_popularity"] = serving.beats_popularity(champion, {"valid_ndcg@10": best["valid"], **best})
    share = change["top10_changed_share"]
    checks["drift_within_bound"] = (share is None or share <= config.max_top10_changed,
                                    {"top10_changed_share": share, "bound": config.max_top10_changed})
    results = [dg.AssetCheckResult(check_name=name, passed=bool(ok), description=CHECKS[name],
                                   severity=dg.AssetCheckSeverity.WARN if name == "drift_within_bound"
                                   else dg.AssetCheckSeverity.ERROR, metadata=plain(meta))
               for name, (ok, meta) in checks.items()]
    previous = facts["previous"]
    return dg.MaterializeResult(check_results=results, metadata={
        "path": dg.MetadataValue.path(str(facts["path"])),
        "query": f'select * from "{spec.name}".recommendations_readable where user_id = ...',
        "champion": entry["champion"], **plain({k: v for k, v in facts.items() if k in (
            "active_users", "users_total", "rows", "retrain_seconds", "users_per_second", "fixed")}),
        "scoring_seconds": round(facts["seconds"], 1), "peak_rss_gb": peak_rss_gb(),
        "k": config.k, "active_days": config.active_days, "dagster/row_count": recs.height,
        **plain({f"drift {k}": v for k, v in change.items()}),
        "drift": png_markdown(plot_drift(history), "drift"),
        "previous_rows": previous.height if previous is not None else 0,
        "preview": table_preview(recs.head(10))})
