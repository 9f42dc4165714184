"""The Dagster code location: every asset, check, resource, job, schedule and sensor."""

import warnings
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

# Partitioned asset checks are a Dagster preview feature; the split checks rely on them deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets import checks, evaluation, features, ingest, models, splits
from mmrec_pipeline.automation import jobs, schedules, sensors
from resources import CORES, env_name, executor, resources_for_env

all_assets = dg.load_assets_from_modules([ingest, splits, features, models, evaluation])
all_checks = dg.load_asset_checks_from_modules([checks])

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    resources=resources_for_env(),
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
    executor=executor(),
)


def materialize_dataset(dataset: str, select: str | None = None) -> tuple[bool, str, list[str]]:
    """Materialize one dataset's partition, recorded in the current instance (`mmrec run`).

    Locally the steps run one at a time in process, so each may use every core; under MMREC_ENV=deploy they go
    through the job's executor to the Celery workers. The unpartitioned assets in the selection (the
    cross-dataset leaderboard) run after the partition succeeds. Returns (success, run id, step failures).
    """
    instance = dg.DagsterInstance.get()
    selection = dg.AssetSelection.from_string(select) if select else dg.AssetSelection.all()
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    try:
        selected = selection.resolve(graph)
    except dg.DagsterInvalidSubsetError as e:
        raise ValueError(f"selection '{select}' names no asset of this code location: {e}") from None
    keys = [k for k in selected if graph.get(k).partitions_def is not None]
    if not keys:
        raise ValueError(f"selection '{select}' matches no partitioned asset")
    ok, run_id, events = _execute(job, instance, keys, dataset, tags={"mmrec/dataset": dataset})
    unpartitioned = [k for k in selected if graph.get(k).partitions_def is None]
    if ok and unpartitioned:
        ok = _execute(job, instance, unpartitioned)[0]
    failures = [f"{e.step_key}: {e.step_failure_data.error.message.strip()}" for e in events if e.is_step_failure]
    return ok, run_id, failures


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, keys: list, partition: str | None = None,
             tags: dict | None = None) -> tuple[bool, str, list]:
    if env_name() != "deploy":
        run_config = {"resources": {"compute": {"config": {"cpu_threads": CORES}}}}
        result = job.execute_in_process(instance=instance, partition_key=partition, asset_selection=keys,
                                        run_config=run_config, raise_on_error=False, tags=tags)
        return result.success, result.run_id, result.all_events
    # The job's executor runs only for a job the workers can rebuild: this module's `defs`, by module name.
    recon = ReconstructableRepository.for_module(__name__, "defs", str(Path(__file__).resolve().parents[1]))
    if partition:
        tags = {**(tags or {}), **job.get_tags_for_partition_key(partition, selected_asset_keys=keys)}
    with dg.execute_job(recon.get_reconstructable_job(job.name), instance, asset_selection=keys, tags=tags,
                        raise_on_error=False) as result:
        return result.success, result.run_id, result.all_events
