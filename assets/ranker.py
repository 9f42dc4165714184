"""The `ranker` asset per dataset: candidates from the trained models' checkpoints, a LightGBM lambdarank ranker
over their scores and the multimodal features, and its ablations. Domain logic: `mmrec_pipeline/models/ranker.py`.

It reads every model asset's rows (allowed missing): the sources' validation choice and the validation-best single
model, the ranker's reference in the Wilcoxon + Holm tests. Its table is the ranker's rows of the metrics table."""

import dagster as dg
import polars as pl
import torch

from assets import DATASETS
from assets.automation import CODE_VERSIONS, REFRESH
from assets.checks import check_result
from assets.metadata import plain
from assets.models import all_model_names
from mmrec_pipeline.data.dataset import SPLIT_COLUMNS, RecDataset
from mmrec_pipeline.evaluation.protocols import (
    DIVERSITY_VECTOR,
    best_on_valid,
    headline,
    valid_on_shared_users,
    valid_values,
)
from mmrec_pipeline.evaluation.report import md_table
from mmrec_pipeline.models import MODELS, ranker
from mmrec_pipeline.models.base import item_features
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import read_parquet, write_parquet
from resources.compute import ComputeResource
from resources.models import ModelSourcesResource
from resources.storage import LakeResource

FEATURE_TABLES = ("image_embeddings", "text_embeddings", "vq_codes")
# the mean training rating is one of its item features, where a dataset has ratings
RANKER_SPLIT_COLUMNS = [*SPLIT_COLUMNS, "rating"]
CHECK = "ranker_sound"


@dg.asset(name="ranker", partitions_def=DATASETS, group_name="models", io_manager_key="lake",
          automation_condition=REFRESH, code_version=CODE_VERSIONS[ranker.NAME],
          ins={"split": dg.AssetIn("split", metadata={"columns": RANKER_SPLIT_COLUMNS, "lazy": True}),
               "items": dg.AssetIn("items"),
               **{t: dg.AssetIn(t, metadata={"allow_missing": True}) for t in FEATURE_TABLES},
               **{m: dg.AssetIn(m, metadata={"allow_missing": True}) for m in all_model_names}},
          check_specs=[dg.AssetCheckSpec(CHECK, asset="ranker", description=(
              "candidate union recall >= every source's; the ranker is tested on the same users as the reference "
              "and validated on the holdout users only"))])
def ranker_asset(context: dg.AssetExecutionContext, compute: ComputeResource, model_sources: ModelSourcesResource,
                 lake_store: LakeResource, split: pl.LazyFrame, items: pl.DataFrame, **tables):
    """Two-stage recommender: the union of the trained sources' top-N, ordered by LightGBM lambdarank (variants
    full, no_multimodal, no_sources), fitted on valid users, scored once on test."""
    spec = get_dataset(context.partition_key)
    config = ranker.RankerConfig.from_overrides(spec.models.get("ranker"))
    data = RecDataset.from_tables(spec.name, split, items, spec.split, spec.repeats_relevant)
    metrics = pl.concat([t for m, t in tables.items() if m in all_model_names and t is not None and t.height])
    lake = lake_store.lake()
    chosen = ranker.choose_sources(metrics)
    if not chosen:
        raise FileNotFoundError("ranker: none of its source models is materialized for this dataset "
                                f"({', '.join(ranker.SOURCE_MODELS)})")
    artifacts = lake.dataset_view(spec.name)
    sources = {name: (f"{m}/{v}", MODELS[m].load(artifacts.model(m).variant(v), model_sources.sources(),
                                                 lake.feature_cache()))
               for name, (m, v) in chosen.items()}
    feats = item_features(data, {t: tables[t] for t in FEATURE_TABLES})
    # LightGBM gets the step's threads (ComputeResource.cpu_threads set torch's); diversity as every model's
    run = ranker.run_ranker(data, sources, ranker.ItemVectors.from_features(feats), config,
                            threads=torch.get_num_threads(), item_vectors=feats.get(DIVERSITY_VECTOR), log=context.log)
    # The reference is the validation-best single model on the users the champion table compares every row on
    # (the ranker's holdout), so the ablation and the champion name the same best single model.
    singles = {name.split("/")[0] for name in valid_values(metrics)}
    frames = [read_parquet(f) for f in (artifacts.per_user(m) for m in sorted(singles)) if f.exists()]
    single_rows = pl.concat(frames, how="diagonal_relaxed") if frames else run.per_user.clear()
    shared, _ = valid_on_shared_users(pl.concat([metrics, run.metrics], how="diagonal_relaxed"),
                                      pl.concat([run.per_user, single_rows], how="diagonal_relaxed"))
    reference = (best_on_valid(shared, among=[n for n in shared if n.split("/")[0] in singles])
                 or best_on_valid(valid_values(metrics)))
    ref_rows = single_rows.filter(pl.col("model") == reference.split("/")[0]) if reference else single_rows.clear()
    per_user, tested = run.per_user, None
    if ref_rows.height:  # its per-user values: the CIs and the paired tests
        per_user, tested = pl.concat([per_user, ref_rows], how="diagonal_relaxed"), reference
    ablation = ranker.ablation_table(per_user, pl.concat([metrics, run.metrics]), tested)
    write_parquet(run.per_user, artifacts.per_user(ranker.NAME))
    ranker.save_variants(run, artifacts.model(ranker.NAME), config)  # what `recommendations` serves it with
    ranker.write_summary(run, ablation, reference, artifacts.ranker_summary)
    ok, facts = ranker.check_run(run, metrics, reference, spec.split)
    gains = run.gains.pivot(on="variant", index="family", values="share").fill_null(0.0)
    yield dg.Output(run.metrics, metadata={
        **plain({f"ndcg@10 {v}": round(x, 4) for v, x in headline(run.metrics).items()}),
        "reference": reference or "", "sources": dg.MetadataValue.json(run.sources),
        "candidate_recall": dg.MetadataValue.md(md_table(run.recall)),
        "gain_by_family": dg.MetadataValue.md(md_table(gains)),
        "ablation": dg.MetadataValue.md(md_table(ablation)),
        **plain({f"chosen {v}": {k: x for k, x in c.items() if k != "grid"} for v, c in run.chosen.items()}),
        **plain({f"users {k}": v for k, v in run.users.items()}),
        **plain({f"seconds {k}": v for k, v in run.seconds.items()})})
    yield check_result(ok, facts, "candidate recall and user sets as the protocol requires", CHECK)
