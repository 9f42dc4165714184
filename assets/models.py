"""One asset per recommender and dataset: train every variant, checkpoint it, evaluate it on test.

Built from the registry (`mmrec_pipeline.models.MODELS`) alone: each class declares its variants, the feature
assets it reads and its pool. The asset's table is the model's rows of the long metrics table; checkpoints go to
`$MMREC_HOME/<dataset>/models/<model>/<variant>/` (config.json + model.safetensors). Every model also reads
`text_embeddings`, whose sentence vectors define intra-list diversity, so that metric is computed the same way
for every row of a dataset's leaderboard.
"""

import sys

import dagster as dg
import polars as pl

from assets import DATASETS, op_tags
from assets.automation import CODE_VERSIONS, REFRESH
from assets.checks import check_result
from assets.metadata import plain, png_markdown
from mmrec_pipeline.compute import peak_rss_gb
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.protocols import (
    DIVERSITY_TABLE,
    DIVERSITY_VECTOR,
    METRICS_SCHEMA,
    headline,
    is_test_stage,
)
from mmrec_pipeline.evaluation.report import md_table, plot_learning_curves
from mmrec_pipeline.models import MODELS
from mmrec_pipeline.models.base import Recommender, item_features
from mmrec_pipeline.models.runner import check_tuning_records, train_variants
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import write_parquet
from resources.compute import ComputeResource
from resources.models import ModelSourcesResource
from resources.storage import LakeResource


def grid_markdown(grid: list[dict], chosen: dict) -> str:
    """The tuning grid as a table, one row per point with its validation NDCG@10; the chosen row marked."""
    def shown(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    rows = [{"chosen": "✓" if all(g[k] == v for k, v in chosen.items()) else "",
             **{k: shown(v) for k, v in g.items() if k not in ("valid_ndcg@10", "fit_seconds")},
             "valid_ndcg@10": g["valid_ndcg@10"], "fit_seconds": g["fit_seconds"]} for g in grid]
    return md_table(pl.DataFrame(rows)) if rows else "(no grid)"


def model_asset(name: str, cls: type[Recommender]) -> dg.AssetsDefinition:
    """The asset of one registry entry: trains `cls.variants` on the tables `cls.feature_assets` names."""
    features = tuple(dict.fromkeys((DIVERSITY_TABLE, *cls.feature_assets)))
    ins = {"split": dg.AssetIn("split", metadata={"columns": list(cls.split_columns), "lazy": True}),
           **{k: dg.AssetIn(k) for k in ("items", *features)}}
    if DIVERSITY_TABLE not in cls.feature_assets:  # read for the diversity vectors only
        ins[DIVERSITY_TABLE] = dg.AssetIn(DIVERSITY_TABLE, metadata={"columns": ["item_id", DIVERSITY_VECTOR]})

    # The tuning check runs in the asset's own step: one process start less per model under the local executor.
    @dg.asset(name=name, ins=ins, partitions_def=DATASETS, group_name="models", io_manager_key="lake", pool=cls.pool,
              op_tags=op_tags(cls.pool, cls.long_running), automation_condition=REFRESH,
              code_version=CODE_VERSIONS[name],
              description=(sys.modules[cls.__module__].__doc__ or cls.__doc__ or name).strip().split("\n\n")[0],
              check_specs=[dg.AssetCheckSpec(TUNING_CHECK, asset=name, description="Each variant's checkpoint holds the "
                                             "point of its grid with the best validation NDCG@10")])
    def _train(context: dg.AssetExecutionContext, compute: ComputeResource, model_sources: ModelSourcesResource,
               lake_store: LakeResource, **tables: pl.DataFrame):
        spec = get_dataset(context.partition_key)
        data = RecDataset.from_tables(spec.name, tables["split"], tables["items"], spec.split, spec.repeats_relevant)
        feats = item_features(data, {f: tables[f] for f in features})
        lake = lake_store.lake()
        artifacts = lake.dataset_view(spec.name)
        out_dir = artifacts.models(name)
        runs, skipped = train_variants(name, cls, cls.variants, data, feats, compute.settings(), out_dir,
                              spec.models.get(name), item_vectors=feats.get(DIVERSITY_VECTOR), log=context.log,
                              sources=model_sources.sources(), feature_cache=lake.feature_cache())
        if not runs and not skipped:
            raise RuntimeError(f"{name}: no variant could train on {spec.name}")
        if not runs:  # every variant lacks a feature this dataset does not have (e.g. vbpr without images)
            context.log.warning(f"{name}: no variant can run on {spec.name}: {skipped}")
            yield dg.Output(pl.DataFrame(schema=METRICS_SCHEMA),
                            metadata=plain({f"skipped {v}": reason for v, reason in skipped.items()}))
            # Nothing was tuned, for a stated reason: a warning in the UI, not an error every night.
            yield check_result(False, {"skipped": skipped}, f"no variant applies to {spec.name}", TUNING_CHECK,
                               severity=dg.AssetCheckSeverity.WARN)
            return
        table = pl.concat([r.metrics for r in runs])
        write_parquet(pl.concat([r.per_user for r in runs]), artifacts.per_user(name))
        test_rows = table.filter(is_test_stage())
        meta = {"checkpoints": dg.MetadataValue.path(str(out_dir)),
                **plain({f"ndcg@10 {v}": round(x, 4) for v, x in headline(test_rows).items()}),
                **plain({f"train_seconds {r.variant}": round(r.report["seconds"], 2) for r in runs}),
                **plain({f"eval_seconds {r.variant}": round(r.eval_seconds, 2) for r in runs}),
                **plain({f"skipped {v}": reason for v, reason in skipped.items()}),
                **plain({f"{k} {r.variant}": x for r in runs for k, x in r.report.get("metadata", {}).items()}),
                # Each variant's validation grid (the chosen point ticked) and what the other points cost.
                **{f"grid {r.variant}": dg.MetadataValue.md(grid_markdown(r.grid, r.chosen)) for r in runs},
                **plain({f"tune_seconds {r.variant}": round(r.tune_seconds, 2) for r in runs}),
                **plain({f"seeds {r.variant}": r.seeds for r in runs}),
                "peak_rss_gb": peak_rss_gb()}  # the step's process: data, fits and evaluations
        curves = {r.variant: r.report["curve"] for r in runs if r.report.get("curve")}
        if curves:
            meta["learning_curve"] = png_markdown(plot_learning_curves(curves, title=name), "learning curve")
        yield dg.Output(table, metadata=meta)
        yield tuning_check_result(out_dir)

    return _train


TUNING_CHECK = "tuned_on_validation"


def tuning_check_result(models_dir) -> dg.AssetCheckResult:
    return check_result(*check_tuning_records(models_dir), "every checkpoint is its grid's validation argmax",
                        TUNING_CHECK)


model_assets = [model_asset(name, cls) for name, cls in MODELS.items()]
all_model_names = [a.key.path[-1] for a in model_assets]
