"""Jobs, the nightly schedule and the new-items sensor."""

import dagster as dg

from assets import DATASETS
from mmrec_pipeline.registry import available_datasets

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


jobs = [dataset_job]
schedules = [nightly]
sensors = []
