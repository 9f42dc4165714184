"""Jobs, the nightly schedule and the new-items sensor."""

import dagster as dg

from assets import DATASETS
from mmrec_pipeline.lake import feature_gaps
from mmrec_pipeline.registry import available_datasets, lake_root

everything_partitioned = dg.AssetSelection.all() - dg.AssetSelection.assets("leaderboard")

dataset_job = dg.define_asset_job(
    "dataset_job", selection=everything_partitioned, partitions_def=DATASETS,
    description="Materialize every asset of one dataset partition.")


@dg.schedule(job=dataset_job, cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
def nightly(context: dg.ScheduleEvaluationContext):
    """Re-materialize every dataset whose files are present (cached features make this cheap)."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in available_datasets():
        yield dg.RunRequest(run_key=f"nightly-{name}-{day}", partition_key=name)


features_job = dg.define_asset_job(
    "features_job", selection=dg.AssetSelection.groups("features"), partitions_def=DATASETS,
    description="Compute the missing item features of one dataset; cached rows are reused.")


@dg.sensor(job=features_job, minimum_interval_seconds=600, default_status=dg.DefaultSensorStatus.RUNNING)
def items_missing_features(context: dg.SensorEvaluationContext):
    """Request a features run for every dataset whose catalog has items without features or captions.

    The run key is the set of gaps, so an unchanged gap (e.g. a caption backfill still in progress) is
    requested once, and a new catalog version or a finished budget-limited run makes a new request."""
    for name in available_datasets():
        gaps = {t: n for t, n in feature_gaps(lake_root() / name).items() if n}
        if gaps:
            key = f"{name}:" + ",".join(f"{t}={n}" for t, n in sorted(gaps.items()))
            yield dg.RunRequest(run_key=key, partition_key=name, tags={"mmrec/feature_gaps": key})


jobs = [dataset_job, features_job]
schedules = [nightly]
sensors = [items_missing_features]
