"""The Dagster code location: every asset, check, resource, job, schedule and sensor."""

import functools
import operator
import warnings

import dagster as dg

# Partitioned asset checks are a Dagster preview feature; the split checks rely on them deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets import checks, evaluation, features, ingest, models, splits
from mmrec_pipeline.automation import jobs, schedules, sensors
from resources import CONCURRENT_STEPS, CORES, resources_for_env

all_assets = dg.load_assets_from_modules([ingest, splits, features, models, evaluation])
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


def resolve_selection(select: str | None, graph) -> set[dg.AssetKey]:
    """Asset keys of a selection string; commas separate a union of selections ('items,users' or
    'group:ingest,group:splits'); a part of a multi-asset brings its siblings. Any problem is a ValueError of
    one line."""
    if not select:
        return dg.AssetSelection.all().resolve(graph)
    parts = [p.strip() for p in select.split(",")] if "(" not in select else [select.strip()]
    try:
        selection = functools.reduce(operator.or_, [dg.AssetSelection.from_string(p) for p in parts if p])
        # `items` alone is a subset of the `ingest` multi-asset, which runs as a whole: select its siblings.
        return selection.required_multi_asset_neighbors().resolve(graph)
    except (dg.DagsterError, TypeError, ValueError) as e:
        message = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise ValueError(f"selection '{select}' is not valid: {message}. Examples: 'group:ingest', 'split+', "
                         "'key:items or key:users', 'items,users'") from None


def materialize_dataset(dataset: str, select: str | None = None,
                        tags: dict[str, str] | None = None) -> tuple[bool, str, list[str]]:
    """Materialize one dataset's partition in process, recorded in the current instance (`mmrec run`).

    Steps run one at a time, so each may use every core. The unpartitioned assets in the selection (the
    cross-dataset leaderboard) run after the partition succeeds. Returns (success, run id, one line per failed
    step: its key and the root cause's message).
    """
    instance = dg.DagsterInstance.get()
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    selected = resolve_selection(select, graph)
    keys = [k for k in selected if graph.get(k).partitions_def is not None]
    if not keys:
        raise ValueError(f"selection '{select}' matches no partitioned asset")
    run_config = {"resources": {"compute": {"config": {"cpu_threads": CORES}}}}
    tags = {**(tags or {}), "mmrec/dataset": dataset}
    result = job.execute_in_process(instance=instance, partition_key=dataset, asset_selection=keys,
                                    run_config=run_config, raise_on_error=False, tags=tags)
    ok, failures = result.success, step_failures(result)
    unpartitioned = [k for k in selected if graph.get(k).partitions_def is None]
    if ok and unpartitioned:
        rest = job.execute_in_process(instance=instance, asset_selection=unpartitioned, raise_on_error=False,
                                      tags=tags)
        ok, failures = rest.success, step_failures(rest)
    return ok, result.run_id, failures


def step_failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """'<step>: <ErrorClass>: <message>' per failed step, from the first error that is not Dagster's wrapper
    ('Error occurred while executing op'): our DataError; newlines folded so each is one line."""
    lines = []
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        while error is not None and error.cause is not None and (error.cls_name or "").startswith("Dagster"):
            error = error.cause
        if error is None:
            lines.append(f"{event.step_key}: failed (no error recorded)")
            continue
        if error.cls_name == "DagsterExecutionInterruptedError":
            lines.append(f"{event.step_key}: interrupted (SIGINT/SIGTERM); tables written before the stop are kept")
            continue
        message = error.message.strip()
        head, sep, rest = message.partition(": ")  # 'pkg.mod.DataError: text' -> 'text'
        if sep and head.rsplit(".", 1)[-1] == error.cls_name:
            message = rest
        text = " | ".join(line.strip() for line in message.splitlines() if line.strip())
        lines.append(f"{event.step_key}: {error.cls_name}: {text}" if error.cls_name else f"{event.step_key}: {text}")
    return lines
