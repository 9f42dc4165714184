"""The Dagster code location: every asset, check, resource, job and sensor (refresh is declarative: automation.py)."""

import warnings

import dagster as dg

# Partitioned asset checks are a Dagster preview feature; the split checks rely on them deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets import checks, evaluation, features, ingest, models, serving, splits
from mmrec_pipeline.automation import jobs, schedules, sensors, with_refresh_policy
from resources import CONCURRENT_STEPS, CORES, resources_for_env

all_assets = with_refresh_policy(dg.load_assets_from_modules([ingest, splits, features, models, evaluation, serving]))
all_checks = dg.load_asset_checks_from_modules([checks])

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    resources=resources_for_env(),
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
    executor=dg.multiprocess_executor.configured({"max_concurrent": CONCURRENT_STEPS}),
)


def materialize_dataset(dataset: str, select: str | None = None) -> tuple[bool, str, list[str]]:
    """Materialize one dataset's partition in process, recorded in the current instance (`mmrec run`).

    Steps run one at a time, so each may use every core. The unpartitioned assets in the selection (the
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
    run_config = {"resources": {"compute": {"config": {"cpu_threads": CORES}}}}
    result = job.execute_in_process(instance=instance, partition_key=dataset, asset_selection=keys,
                                    run_config=run_config, raise_on_error=False, tags={"mmrec/dataset": dataset})
    ok = result.success
    unpartitioned = [k for k in selected if graph.get(k).partitions_def is None]
    if ok and unpartitioned:
        ok = job.execute_in_process(instance=instance, asset_selection=unpartitioned, raise_on_error=False).success
    failures = [f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
                for e in result.all_events if e.is_step_failure]
    return ok, result.run_id, failures
