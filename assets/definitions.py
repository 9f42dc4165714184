"""The Dagster code location: every asset, check, resource, job and sensor. Each asset's decorator carries its
automation condition and code version (automation.py); `mmrec run` executes them through resources/runner.py."""

import json
import math
import warnings

import dagster as dg

# Partitioned asset checks are a Dagster preview feature; the split checks rely on them deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
# Dagster's own selection parser calls a beta parameter; the warning would end up in every `mmrec run --select`.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from assets import DATASETS, checks, evaluation, features, ingest, models, ranker, serving, splits
from assets.automation import BACKFILL_TAG
from mmrec_pipeline.catalog import feature_gaps
from mmrec_pipeline.registry import available_datasets, get_dataset
from resources import executor, resources_for_env
from resources.runs import step_cpu_clock
from resources.storage import LakeResource

automation_sensor = dg.AutomationConditionSensorDefinition(
    "refresh_on_change", target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60,
    description="Observes raw files hourly; refreshes what changed; refreshes recommendations nightly.")

everything_partitioned = dg.AssetSelection.all() - dg.AssetSelection.assets("leaderboard")

dataset_job = dg.define_asset_job(
    "dataset_job", selection=everything_partitioned, partitions_def=DATASETS,
    description="Materialize every asset of one dataset partition (by hand; automation refreshes only changes).")

features_job = dg.define_asset_job(
    "features_job", selection=dg.AssetSelection.groups("features"), partitions_def=DATASETS,
    description="Compute the missing item features of one dataset; cached rows are reused.")


SENSOR_INTERVAL_S = 600


@dg.sensor(job=features_job, minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def items_missing_features(context: dg.SensorEvaluationContext, lake_store: LakeResource):
    """Request a features run for every dataset whose catalog has items without features or captions.

    The run key is the set of gaps, so an unchanged gap (e.g. a caption backfill still in progress) is
    requested once, and a new catalog version or a finished budget-limited run makes a new request. Each run's
    tags (and the sensor's cursor) say what remains and when the backfill should catch up."""
    lake, progress = lake_store.lake(), {}
    for name in available_datasets(lake):
        gaps = {t: n for t, n in feature_gaps(lake.dataset_view(name)).items() if n}
        if gaps:
            key = f"{name}:" + ",".join(f"{t}={n}" for t, n in sorted(gaps.items()))
            tags = backfill_tags(gaps, get_dataset(name).features, _run_cadence(context.instance, name))
            progress[name] = {k.removeprefix("mmrec/"): v for k, v in tags.items()}
            context.log.info(f"{name}: {tags}")
            yield dg.RunRequest(run_key=key, partition_key=name, tags={"mmrec/feature_gaps": key, **tags})
    context.update_cursor(json.dumps(progress, sort_keys=True))


def backfill_tags(gaps: dict[str, int], settings: dict, cadence_s: float) -> dict[str, str]:
    """Tags of the features run that fills `gaps` ({feature table: items without a value}) under the dataset's
    per-run budgets (`features: {<feature>: {max_items_per_run: N}}`): `partial` when it leaves items for later
    runs, `final` when it catches up; the items remaining and, for a partial run, an ETA at one run per
    `cadence_s`."""
    runs = {t: math.ceil(n / budget) for t, n in gaps.items()
            if (budget := (settings.get(t) or {}).get("max_items_per_run"))}
    left = max(runs.values(), default=1)
    tags = {BACKFILL_TAG: "partial" if left > 1 else "final",
            "mmrec/backfill_remaining": ", ".join(f"{t}={n}" for t, n in sorted(gaps.items()))}
    if left > 1:
        tags["mmrec/backfill_eta"] = f"~{_duration(left * cadence_s)} ({left} runs, one per ~{_duration(cadence_s)})"
    return tags


def _run_cadence(instance: dg.DagsterInstance, dataset: str) -> float:
    """Seconds between two backfill runs: the sensor's interval, or the last features run's wall time if longer."""
    records = instance.get_run_records(filters=dg.RunsFilter(
        job_name=features_job.name, tags={"dagster/partition": dataset}, statuses=[dg.DagsterRunStatus.SUCCESS]),
        limit=1)
    last = records[0] if records else None
    took = last.end_time - last.start_time if last and last.start_time and last.end_time else 0.0
    return max(float(SENSOR_INTERVAL_S), took)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"




defs = dg.Definitions(
    assets=dg.load_assets_from_modules([ingest, splits, features, models, ranker, evaluation, serving]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    resources=resources_for_env(),
    jobs=[dataset_job, features_job],
    sensors=[automation_sensor, items_missing_features],
    executor=executor(),
    loggers={"console": dg.colored_console_logger, "step_cpu_clock": step_cpu_clock},
)
