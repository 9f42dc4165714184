"""Declarative refresh on a temporary instance: a changed raw file of `sample` refreshes ingest and everything
downstream; a night in which nothing changed requests only the recommendations refresh. Materializations are
recorded as runless events (the heavy assets are not run: the assertions are about what gets requested)."""

import datetime as dt
import os
import uuid

import dagster as dg
from dagster._core.definitions.observe import (
    observe,  # runs the real observation (not re-exported by dagster)
)

from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import Lake
from resources.storage import LakeResource

LAKE = {"lake_store": LakeResource()}  # where raw_files finds (and generates) the sample's raw files

START = dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.UTC)


def _requested(result) -> set[tuple[str, str | None]]:
    out = set()
    for r in result.results:
        for ap in r.true_subset.expensively_compute_asset_partitions():
            out.add((ap.asset_key.to_user_string(), ap.partition_key))
    return out


def _materialize_all(instance, graph, partition: str) -> None:
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if node.is_materializable:
            instance.report_runless_asset_event(dg.AssetMaterialization(
                key, partition=partition if node.partitions_def is not None else None))


def test_changed_raw_file_refreshes_downstream_and_a_quiet_night_only_recommendations(sample_tables):
    from assets.definitions import defs
    from assets.ingest import raw_files

    graph = defs.resolve_asset_graph()
    partitioned = {(k.to_user_string(), "sample") for k in graph.materializable_asset_keys
                   if graph.get(k).partitions_def is not None}
    instance = dg.DagsterInstance.ephemeral()

    def tick(when, cursor):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=when, cursor=cursor)
        return _requested(result), result.cursor

    requested, cursor = tick(START, None)
    assert requested == set()  # nothing observed yet: nothing to ingest

    observe([raw_files], instance=instance, partition_key="sample", resources=LAKE)
    requested, cursor = tick(START + dt.timedelta(minutes=1), cursor)
    assert requested == partitioned  # the cross-dataset leaderboard follows once `metrics` has updated

    _materialize_all(instance, graph, "sample")
    requested, cursor = tick(START + dt.timedelta(minutes=2), cursor)
    assert requested == set()

    # Same files observed again (the hourly observation): no new data version, nothing to do.
    observe([raw_files], instance=instance, partition_key="sample", resources=LAKE)
    requested, cursor = tick(START + dt.timedelta(minutes=3), cursor)
    assert requested == set()

    # The night: nothing changed, so only the scheduled refresh (and the hourly observation of the raw files).
    night = START.replace(hour=2) + dt.timedelta(days=1)
    requested, cursor = tick(night, cursor)
    assert {r for r in requested if r[0] != "raw_files"} == {("recommendations", "sample")}
    assert {r for r in requested if r[0] == "raw_files"} <= {("raw_files", p) for p in defs.resolve_asset_graph()
                                                              .get(dg.AssetKey("raw_files")).partitions_def
                                                              .get_partition_keys()}
    instance.report_runless_asset_event(dg.AssetMaterialization("recommendations", partition="sample"))
    requested, cursor = tick(night + dt.timedelta(minutes=1), cursor)  # the refresh ran: nothing more to do
    assert {r for r in requested if r[0] != "raw_files"} == set()

    # One raw file of `sample` changes: ingest and everything downstream of it refresh, for `sample` only.
    raw = get_dataset("sample").data_dir(Lake()) / "v1" / "users.parquet"
    stat = raw.stat()
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    observe([raw_files], instance=instance, partition_key="sample", resources=LAKE)
    requested, cursor = tick(night + dt.timedelta(minutes=5), cursor)
    assert requested == partitioned


def test_recommendations_are_overdue_after_a_night_without_a_refresh():
    """The freshness daemon's own evaluation of `recommendations`' policy: fresh after the night's materialization,
    overdue (FAIL, shown in the UI) once the next night's 06:00 deadline passes without one."""
    import asyncio

    from dagster._core.definitions.freshness import FreshnessState
    from dagster._core.definitions.freshness_evaluator import FRESHNESS_EVALUATORS_BY_POLICY_TYPE
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.test_utils import freeze_time

    from assets.definitions import defs

    node = defs.resolve_asset_graph().get(dg.AssetKey("recommendations"))
    evaluator = FRESHNESS_EVALUATORS_BY_POLICY_TYPE[type(node.freshness_policy)]()
    night = dt.datetime(2026, 3, 2, 2, 40, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        def state(at: dt.datetime) -> FreshnessState:
            with freeze_time(at):
                return asyncio.run(evaluator.evaluate_freshness(LoadingContextForTest(instance), node))

        with freeze_time(night):
            instance.report_runless_asset_event(dg.AssetMaterialization("recommendations", partition="sample"))
        assert state(night + dt.timedelta(hours=12)) == FreshnessState.PASS
        assert state(night + dt.timedelta(days=1, hours=3)) == FreshnessState.PASS  # 05:40, before 06:00
        assert state(night + dt.timedelta(days=1, hours=4)) == FreshnessState.FAIL  # 06:40: the night failed
    assert defs.resolve_asset_graph().get(dg.AssetKey("metrics")).freshness_policy is None


def test_partial_backfill_runs_do_not_retrain_the_models_the_last_one_does():
    """The `items_missing_features` sensor's budget-limited runs (tag mmrec/backfill=partial) update the feature
    tables without retraining what depends on them; the run that catches up (final) refreshes them."""
    from dagster._core.events import DagsterEvent, StepMaterializationData
    from dagster._core.storage.dagster_run import DagsterRun

    from assets.automation import BACKFILL_TAG
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    instance = dg.DagsterInstance.ephemeral()
    cursor = None

    def tick(minutes: int) -> set:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                                   evaluation_time=START + dt.timedelta(minutes=minutes))
        cursor = result.cursor
        return {r for r in _requested(result) if r[0] != "raw_files"}

    def features_run(backfill: str) -> None:
        run = DagsterRun(job_name="features_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.SUCCESS,
                         tags={BACKFILL_TAG: backfill, "dagster/partition": "sample"})
        instance.add_run(run)
        event = DagsterEvent(event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
                             job_name="features_job", event_specific_data=StepMaterializationData(
                                 dg.AssetMaterialization("review_summaries", partition="sample")))
        instance.report_dagster_event(event, run_id=run.run_id)

    tick(0)
    _materialize_all(instance, graph, "sample")
    assert tick(1) == set()
    features_run("partial")
    assert tick(2) == set()  # 32 more summaries: nothing retrains
    features_run("final")
    children = {(k.to_user_string(), "sample") for k in graph.get(dg.AssetKey("review_summaries")).child_keys}
    assert children and children <= tick(3)  # caught up: what reads the summaries refreshes
