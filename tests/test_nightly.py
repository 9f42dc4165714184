"""Issue 34, the nightly increment: `hm-synthetic` (tiny scale) gains one day of transactions; the declarative
refresh requests what reads the interactions (split, the models, metrics, champion, recommendations), and the
feature assets it also requests (the items table changes: an article's price is its mean transaction price) serve
every item from the feature cache, whose files stay as they were.

The assets that are cheap here run for real (ingest, split, the text features, popularity, item-kNN, metrics,
champion, recommendations); the others are recorded as runless materializations, as in test_automation.py."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._core.definitions.observe import observe

from mmrec_pipeline.data import hm_synthetic
from mmrec_pipeline.features.families import FEATURES
from mmrec_pipeline.models import MODELS, ranker
from mmrec_pipeline.registry import registry_path

DATASET = "hm-synthetic"
SCALE = 0.001
START = dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.UTC)
RUN = ("items", "users", "interactions", "split", "image_embeddings", "captions", "review_summaries",
       "text_embeddings", "popularity", "item_knn", "metrics", "champion", "recommendations")
MODELS_READING_INTERACTIONS = {"popularity", "item_knn"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _registry(path, base: str, extra_days: int):
    raw = yaml.safe_load(base)
    raw["datasets"][DATASET]["options"] = {"scale": SCALE, "seed": 5, "extra_days": extra_days}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _cache_files(root) -> dict[str, tuple[int, int]]:
    """Every file of the feature cache (locks and temps aside): size and mtime."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and "lock" not in p.name}


def test_one_more_day_refreshes_what_reads_the_interactions_and_no_feature_is_recomputed(tmp_path, monkeypatch):
    from assets import evaluation, features, ingest, models, serving, splits
    from assets import ranker as ranker_asset
    from assets.definitions import defs
    from assets.ingest import raw_files
    from mmrec_pipeline.storage import Lake
    from resources import resources_for_env

    base = registry_path().read_text()  # the same partitions, with a tiny hm-synthetic
    monkeypatch.setenv("MMREC_HOME", str(tmp_path / "lake"))
    monkeypatch.setenv("MMREC_DATASETS", str(tmp_path / "datasets.yaml"))
    _registry(tmp_path / "datasets.yaml", base, extra_days=0)
    graph = defs.resolve_asset_graph()
    everything = dg.load_assets_from_modules([ingest, splits, features, models, ranker_asset, evaluation, serving])
    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def tick(minutes: int) -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                   evaluation_time=START + dt.timedelta(minutes=minutes))
        cursor = result.cursor
        return {ap.asset_key.to_user_string() for r in result.results
                for ap in r.true_subset.expensively_compute_asset_partitions() if ap.partition_key == DATASET}

    def refresh(requested: set[str]) -> dict[str, dict]:
        """Runs the requested assets that are cheap here, records the rest; each run asset's metadata."""
        result = dg.materialize(everything, selection=dg.AssetSelection.assets(*(requested & set(RUN))),
                                partition_key=DATASET, instance=instance, resources=resources_for_env("test"))
        assert result.success
        for key in graph.toposorted_asset_keys:
            name = key.to_user_string()
            if name in requested - set(RUN):
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=DATASET))
        return {e.asset_key.to_user_string(): e.metadata for e in result.get_asset_materialization_events()
                for e in [e.event_specific_data.materialization]}

    partitioned = {k.to_user_string() for k in graph.materializable_asset_keys
                   if graph.get(k).partitions_def is not None}
    assert tick(0) == set()  # nothing observed yet
    observe([raw_files], instance=instance, partition_key=DATASET, resources=resources_for_env("test"))
    first = tick(1)
    assert first == partitioned
    refresh(first)
    assert tick(2) == set()
    cache = Lake().feature_cache().path
    before = _cache_files(cache)
    assert any(f.startswith("text/") for f in before), sorted(before)  # the text embeddings' store
    rows_before = pl.read_parquet(Lake().dataset_view(DATASET).table("interactions")).height

    # The night: one more day of transactions.
    _registry(tmp_path / "datasets.yaml", base, extra_days=1)
    observe([raw_files], instance=instance, partition_key=DATASET, resources=resources_for_env("test"))
    night = tick(3)
    # Every model reads the split, and so the new rows (the temporal cuts move with them too).
    assert {"interactions", "split", "metrics", "champion", "recommendations", *MODELS, ranker.NAME} <= night
    ran = refresh(night)
    assert tick(4) == set()

    interactions = pl.read_parquet(Lake().dataset_view(DATASET).table("interactions"))
    added = interactions.filter(pl.col("ts") > dt.datetime(2020, 9, 22, tzinfo=dt.UTC)).height
    assert added > 0 and interactions.height == rows_before + added
    assert (Lake().sample_raw(DATASET) / hm_synthetic.folder("", SCALE, 5, 1)).is_dir()
    assert MODELS_READING_INTERACTIONS | {"recommendations"} <= set(ran)
    # The features ran (their input table changed) but computed no item: every value came from the cache.
    for feature in FEATURES:
        if feature in ran:
            assert ran[feature]["computed"].value == 0, (feature, ran[feature])
    assert ran["text_embeddings"]["reused"].value > 0
    assert _cache_files(cache) == before
