"""Serving: the champion is chosen on validation, retrained with its validation-chosen epochs, its top-K written and
compared run to run; the asset checks are registered and pass on `sample` (popularity + EASE, real training)."""

import dataclasses
import json

import duckdb
import numpy as np
import polars as pl
import pytest

from mmrec_pipeline import serving
from mmrec_pipeline.compute import Compute
from mmrec_pipeline.models import CLASSIC
from mmrec_pipeline.models.base import ItemFeatures
from mmrec_pipeline.models.bpr_mf import BPRMF, BPRConfig
from mmrec_pipeline.models.hybrid import Hybrid, HybridConfig
from mmrec_pipeline.models.runner import train_variants
from mmrec_pipeline.storage import write_parquet

RECOMMENDATION_CHECKS = {"k_items_per_active_user", "no_unknown_items", "no_history_items",
                         "champion_beats_popularity", "drift_within_bound"}


def _metrics(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame([{"model": m, "variant": v, "protocol": p, "metric": "ndcg", "k": 10, "value": x}
                         for m, v, p, x in rows])


def test_champion_is_the_best_on_validation_not_on_test():
    metrics = _metrics([("ease", "default", "temporal@valid", 0.20), ("ease", "default", "temporal", 0.10),
                        ("sasrec", "default", "temporal@valid", 0.15), ("sasrec", "default", "temporal", 0.30),
                        ("popularity", "global", "temporal@valid", 0.05), ("popularity", "global", "temporal", 0.04)])
    ranking = serving.validation_ranking(metrics, "temporal")
    best = serving.choose_champion(ranking)
    assert (best["model"], best["runner_up"]) == ("ease", "sasrec/default")
    assert best["margin"] == pytest.approx(0.05) and best["test_ndcg@10"] == pytest.approx(0.10)
    assert serving.beats_popularity(ranking, best)[0]
    assert serving.choose_champion(ranking, pin="sasrec")["model"] == "sasrec"
    with pytest.raises(ValueError, match="pinned champion 'bpr_mf'"):
        serving.choose_champion(ranking, pin="bpr_mf")
    with pytest.raises(ValueError, match="no 'temporal@valid'"):
        serving.validation_ranking(metrics.filter(pl.col("protocol") == "temporal"), "temporal")


def _checkpoint(folder, cls, config, report):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": cls.name, "config": dataclasses.asdict(config),
                                                    "extra": {}}))
    (folder / "fit_report.json").write_text(json.dumps(report))
    return folder


def test_retrain_uses_the_epochs_chosen_on_validation(tmp_path):
    cfg, fixed = serving.retrain_config(BPRMF, _checkpoint(tmp_path / "b", BPRMF, BPRConfig(), {"best_epoch": 7}))
    assert cfg.epochs == 7 and fixed == {"epochs": 7}
    cfg, fixed = serving.retrain_config(Hybrid, _checkpoint(tmp_path / "h", Hybrid, HybridConfig(alpha=0.2),
                                                            {"mf": {"best_epoch": 5}}))
    assert (cfg.mf_epochs, list(cfg.alphas)) == (5, [0.2])
    assert serving.retrain_config(BPRMF, _checkpoint(tmp_path / "x", BPRMF, BPRConfig(), {}))[1] == {}
    (tmp_path / "x" / "fit_report.json").unlink()  # a checkpoint from before fit reports were kept
    with pytest.raises(ValueError, match="fit_report.json not found"):
        serving.retrain_config(BPRMF, tmp_path / "x")


def test_drift_between_runs():
    cur = pl.DataFrame({"user_id": ["a"] * 3 + ["b"] * 3, "rank": [1, 2, 3] * 2, "item_id": list("xyzxyz")})
    assert serving.drift(cur, None, 10)["mean_jaccard"] is None
    same = serving.drift(cur, cur, 10)
    assert same["mean_jaccard"] == 1.0 and same["top10_changed_share"] == 0.0 and same["coverage"] == 0.3
    prev = cur.with_columns(pl.when((pl.col("user_id") == "b") & (pl.col("rank") == 3)).then(pl.lit("w"))
                            .otherwise(pl.col("item_id")).alias("item_id"))
    changed = serving.drift(cur, prev, 10)
    assert changed["mean_jaccard"] == pytest.approx((1 + 2 / 4) / 2) and changed["top10_changed_share"] == 0.5
    # a previous run with other users and items, in another order: ids are matched as ids
    other = pl.DataFrame({"user_id": ["b"] * 3 + ["c"] * 2, "rank": [1, 2, 3, 1, 2], "item_id": list("xyzqx")})
    moved = serving.drift(cur, other, 10)
    assert moved["compared_users"] == 1 and moved["mean_jaccard"] == 1.0 and moved["top10_changed_share"] == 0.0


@pytest.fixture(scope="module")
def sample_lake(sample_tables, sample_dataset, lake):
    """split, items and the metrics of popularity and EASE (trained for real, test + @valid rows) in the lake."""
    tables, split = sample_tables
    folder = lake / "sample"
    write_parquet(split, folder / "split.parquet")
    write_parquet(tables.items, folder / "items.parquet")
    runs = []
    for name in ("popularity", "ease"):
        cls = CLASSIC[name]
        runs += train_variants(name, cls, cls.variants, sample_dataset, ItemFeatures(), Compute(device="cpu"),
                               folder / "models" / name)[0]
    write_parquet(pl.concat([r.metrics for r in runs]), folder / "metrics.parquet")
    return folder


def _run(selection, instance):
    from assets.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    keys = selection.resolve(graph)
    checks = selection.resolve_checks(graph)
    result = job.get_subset(asset_selection=keys, asset_check_selection=checks).execute_in_process(
        partition_key="sample", instance=instance, raise_on_error=True)
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def test_checks_registered_and_pass_on_sample(sample_lake, sample_dataset, lake):
    import dagster as dg

    from assets.definitions import defs

    registered = {k.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    assert {f"recommendations:{c}" for c in RECOMMENDATION_CHECKS} | {"metrics:metrics_complete"} | {
        f"{t}:{t}_complete" for t in ("image_embeddings", "captions", "text_embeddings", "vq_codes",
                                      "review_summaries")} <= registered

    instance = dg.DagsterInstance.ephemeral()
    first = _run(dg.AssetSelection.assets("champion", "recommendations")
                 | dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("metrics"), "metrics_complete")), instance)
    assert first == dict.fromkeys(RECOMMENDATION_CHECKS | {"metrics_complete"}, True)
    champion = pl.read_parquet(sample_lake / "champion.parquet")
    assert champion.filter("champion")["model"].item() == "ease"  # the only model beside popularity
    recs = pl.read_parquet(sample_lake / "recommendations.parquet")
    assert recs.group_by("user_id").len()["len"].unique().to_list() == [50]
    by_rank = recs.sort("user_id", "rank").with_columns(pl.col("score").diff().over("user_id").alias("step"))
    assert by_rank["step"].drop_nulls().max() <= 0  # rank 1 has the highest score

    second = _run(dg.AssetSelection.assets("recommendations"), instance)  # the nightly refresh: same data, same lists
    assert all(second.values())
    drift = json.loads((sample_lake / "serving" / "drift.json").read_text())
    assert drift[-1]["mean_jaccard"] == 1.0 and drift[-1]["top10_changed_share"] == 0.0
    assert (sample_lake / "serving" / "recommendations.previous.parquet").exists()
    with duckdb.connect(str(lake / "lake.duckdb"), read_only=True) as con:
        user = recs["user_id"][0]
        rows = con.execute('select rank, title from "sample".recommendations_readable where user_id = ? '
                           "order by rank limit 5", [user]).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and all(r[1] for r in rows)
    printed = serving.example_lists(sample_lake)  # what `mmrec run` prints last
    assert printed.count("  user ") == 3 and printed.count("\n    5. ") == 3


def test_recommendations_exclude_history_and_cover_active_users(sample_tables, tmp_path):
    tables, split = sample_tables
    data = serving.all_interactions(split, "sample", tables.items, "temporal", repeats_relevant=False)
    model = CLASSIC["popularity"]()
    model.fit(data, ItemFeatures(), Compute(device="cpu"))
    users = serving.active_users(data, 28)
    assert 0 < len(users) < data.n_users
    facts = serving.write_top_k(model, data, users, tmp_path / "r.parquet", k=20, batch_users=100)
    recs = pl.read_parquet(tmp_path / "r.parquet")
    assert facts["rows"] == recs.height == 20 * len(users)
    import pyarrow.parquet as pq
    assert pq.ParquetFile(tmp_path / "r.parquet").num_row_groups == int(np.ceil(len(users) / 100))
    checks = serving.check_recommendations(recs, data, users, 20)
    assert all(ok for ok, _ in checks.values()), checks
    # a table that recommends a history item fails the history check
    seen = data.ids(data.split.head(1)).row(0)
    bad = pl.concat([recs, pl.DataFrame({"user_id": [seen[0]], "rank": [21], "item_id": [seen[1]], "score": [0.0]},
                                        schema=recs.schema)])
    assert not serving.check_recommendations(bad, data, users, 20)["no_history_items"][0]


def test_feature_check_passes_after_a_full_run_on_a_small_sample_catalog(sample_tables, tmp_path):
    """`image_embeddings` computed for real (packaged EfficientNet-Lite0) on 8 sample items, then its check."""
    import dagster as dg

    from assets import features, ingest, splits
    from mmrec_pipeline.catalog import items_without_feature
    from resources import resources_for_env
    from resources.storage import LakeIOManager, LakeResource

    items = sample_tables[0].items.head(8)
    write_parquet(items, tmp_path / "sample" / "items.parquet")
    result = dg.materialize(  # the asset runs its completeness check in its own step
        [ingest.raw_files, ingest.ingest, splits.split, *features.feature_assets],
        selection=dg.AssetSelection.assets("image_embeddings"),
        partition_key="sample", instance=dg.DagsterInstance.ephemeral(),
        resources={**resources_for_env("test"), "lake": LakeIOManager(lake=LakeResource(root=str(tmp_path)))})
    evaluations = result.get_asset_check_evaluations()
    assert [(e.asset_check_key.name, e.passed) for e in evaluations] == [("image_embeddings_complete", True)]
    table = pl.read_parquet(tmp_path / "sample" / "image_embeddings.parquet")
    vectors = [c for c in table.columns if c != "item_id"]
    holed = table.with_columns([pl.when(pl.col("item_id") == items["item_id"][0]).then(None).otherwise(pl.col(c))
                                .alias(c) for c in vectors])
    assert items_without_feature(items, holed, needs_image=True)["item_id"].to_list() == [items["item_id"][0]]


def test_metrics_check_finds_nan_and_missing_protocol_rows():
    from mmrec_pipeline.evaluation.protocols import check_metrics

    rows = [(m, v, p, k) for m, v in (("ease", "default"), ("popularity", "global"), ("popularity", "recent"))
            for p in ("temporal", "temporal@valid") for k in (5, 10, 20)]
    table = pl.DataFrame([{"model": m, "variant": v, "protocol": p, "metric": "ndcg", "k": k, "value": 0.1}
                          for m, v, p, k in rows])
    assert check_metrics(table, "temporal")[0]
    ok, meta = check_metrics(table.filter(~((pl.col("variant") == "recent") & (pl.col("protocol") == "temporal@valid"))),
                             "temporal")
    assert not ok and meta["missing_rows"] == 3 and meta["missing_examples"][0].startswith("popularity/recent")
    ok, meta = check_metrics(table.with_columns(pl.when(pl.col("k") == 5).then(float("nan")).otherwise(pl.col("value"))
                                                .alias("value")), "temporal")
    assert not ok and meta["nan_or_null_values"] == 6
    # A protocol that evaluated no user (`+cold` where no test item is new) needs no metric rows; the test one does.
    accounting = [{"model": "ease", "variant": "default", "protocol": p, "metric": "users_evaluated", "k": None,
                   "value": 0.0} for p in ("temporal+cold", "temporal")]
    ok, meta = check_metrics(pl.concat([table, pl.DataFrame(accounting[:1])], how="diagonal_relaxed"), "temporal")
    assert ok, meta
    with_rows_claimed = pl.concat([table, pl.DataFrame(accounting[:1]).with_columns(pl.lit(3.0).alias("value"))],
                                  how="diagonal_relaxed")
    assert check_metrics(with_rows_claimed, "temporal")[1]["missing_rows"] == 3
    no_test_users = table.filter(~((pl.col("model") == "ease") & (pl.col("protocol") == "temporal")))
    assert not check_metrics(pl.concat([no_test_users, pl.DataFrame(accounting[1:])], how="diagonal_relaxed"),
                             "temporal")[0]


def test_iterative_champion_retrains_with_its_best_epoch_and_no_validation(sample_tables, sample_dataset, tmp_path):
    """BPR-MF (small) trained with early stopping on valid; `serve` retrains it on every interaction for exactly its
    best epoch count (nothing left to validate on) and writes each active user's top-K."""
    tables, split = sample_tables
    runs, _ = train_variants("bpr_mf", BPRMF, {"default": {"dim": 16, "epochs": 3, "patience": 1}}, sample_dataset,
                             ItemFeatures(), Compute(device="cpu"), tmp_path / "models" / "bpr_mf")
    best_epoch = runs[0].report["best_epoch"]
    assert runs[0].metrics.filter(pl.col("protocol") == "temporal@valid").height > 0
    facts = serving.serve(BPRMF, tmp_path / "models" / "bpr_mf" / "default", split, tables.items, "sample",
                          "temporal", False, {}, Compute(device="cpu"), tmp_path,
                          serving.ServingConfig(k=10, active_days=28))
    assert facts["fixed"] == {"epochs": best_epoch} and facts["rows"] == 10 * facts["active_users"] > 0


def test_metrics_check_asks_pointwise_protocols_for_auc_not_ndcg():
    """mmrec_dlrm's `pointwise:rating>=4` rows classify reviews (AUC, log loss, no K): the check wants AUC for every
    variant there, not NDCG@K (issue 33: it failed every `make demo` on sample)."""
    from mmrec_pipeline.evaluation.protocols import check_metrics

    variants = ("full-basic", "full-none", "raw-basic")
    ranking = [{"model": "mmrec_dlrm", "variant": v, "protocol": p, "metric": "ndcg", "k": k, "value": 0.1}
               for v in variants for p in ("temporal", "temporal@valid") for k in (5, 10, 20)]
    pointwise = [{"model": "mmrec_dlrm", "variant": v, "protocol": "pointwise:rating>=4", "metric": m, "k": None,
                  "value": 0.7} for v in variants for m in ("auc", "logloss", "accuracy", "fpr")]
    table = pl.DataFrame(ranking + pointwise, schema_overrides={"k": pl.Int64})
    ok, meta = check_metrics(table, "temporal")
    assert ok, meta
    ok, meta = check_metrics(table.filter(~((pl.col("variant") == "full-none") & (pl.col("metric") == "auc"))),
                             "temporal")
    assert not ok and meta["missing_rows"] == 1
    assert meta["missing_examples"] == ["mmrec_dlrm/full-none pointwise:rating>=4 auc"]


def test_feature_check_passes_when_only_the_budget_left_items_for_the_backfill():
    """`make demo` summarizes 32 of sample's items and leaves the rest to the `items_missing_features` sensor: the
    check passes (every missing item is one the budget left); a failed item, or a hole the budget does not
    explain, fails it."""
    from assets.features import completeness
    from mmrec_pipeline.features.families import FEATURES

    feature = FEATURES["review_summaries"]
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "image_sha256": ["x", "y", "z"]})
    table = pl.DataFrame({"item_id": ["a", "b", "c"], "summary": ["good", None, None]})
    result = completeness(feature, table, items, {"remaining": 2, "failed": 0})
    assert result.passed and result.description == "2 items left for the backfill by this budget-limited run"
    assert completeness(feature, table.with_columns(pl.lit("ok").alias("summary")), items, {}).passed
    assert not completeness(feature, table, items, {"remaining": 1, "failed": 0}).passed
    failed = completeness(feature, table, items, {"remaining": 1, "failed": 1})
    assert not failed.passed and failed.severity.value == "ERROR"
    # An item with neither a training review nor a description has nothing to summarise: no value, by design.
    no_text = completeness(feature, table, items, {"remaining": 1, "failed": 0, "no_input": 1})
    assert no_text.passed and no_text.description == "1 items with nothing to compute from, 1 left for the backfill"
