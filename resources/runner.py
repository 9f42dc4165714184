"""The run executor of `mmrec run`: one dataset's partition through the code location's job, recorded in the
instance (as the UI's runs, so the UI lists and re-executes them), then its step timings and failures."""

import dataclasses
import functools
import operator
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.workspace.load_target import WorkspaceFileTarget

from assets import definitions
from resources import env_name
from resources.runs import STEP_CPU_SECONDS, reap_dead_runs

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"  # the UI's code location (`mmrec ui`)


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


@dataclasses.dataclass
class StepTiming:
    step: str
    wall_seconds: float
    cpu_seconds: float | None  # None where the step ran in another process (deploy/k8s)
    ok: bool


@dataclasses.dataclass
class RunOutcome:
    ok: bool
    run_id: str
    failures: list[str]  # one line per failed step: its key and the root cause's message
    steps: list[StepTiming]  # every step of the run(s), in the order they finished


def materialize_dataset(dataset: str, select: str | None = None,
                        tags: dict[str, str] | None = None) -> RunOutcome:
    """Materialize one dataset's partition, recorded in the current instance (`mmrec run`).

    Steps go through the job's executor: locally `CONCURRENT_STEPS` step processes at a time with one torch
    thread each (small models train as fast on one thread as on two, so two steps side by side finish the run
    almost twice as fast: docs/BENCHMARKS.md, Speed), under MMREC_ENV=deploy the Celery workers. Tests
    (MMREC_ENV=test) run the steps one by one in process. The unpartitioned assets in the selection (the
    cross-dataset leaderboard) run after the partition succeeds.
    """
    instance = dg.DagsterInstance.get()
    job = definitions.defs.resolve_implicit_global_asset_job_def()
    graph = definitions.defs.resolve_asset_graph()
    selected = resolve_selection(select, graph)
    keys = [k for k in selected if graph.get(k).partitions_def is not None]
    if not keys:
        raise ValueError(f"selection '{select}' matches no partitioned asset")
    tags = {**(tags or {}), "mmrec/dataset": dataset}
    ok, run_id, events = _execute(job, instance, keys, dataset, tags=tags)
    failures, steps = step_failures(events), step_timings(instance, run_id)
    unpartitioned = [k for k in selected if graph.get(k).partitions_def is None]
    if ok and unpartitioned:
        ok, second_id, rest = _execute(job, instance, unpartitioned, tags=tags)
        failures, steps = step_failures(rest), steps + step_timings(instance, second_id)
    return RunOutcome(ok, run_id, failures, steps)


def step_timings(instance: dg.DagsterInstance, run_id: str) -> list[StepTiming]:
    """Wall seconds of each step of a run from the instance's event log (start to success/failure), with the
    CPU seconds `step_cpu_clock` recorded for the steps that ran in this process."""
    ends = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    started, out = {}, []
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, *ends}):
        if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
            started[entry.step_key] = entry.timestamp
        elif entry.step_key in started:
            out.append(StepTiming(entry.step_key, entry.timestamp - started.pop(entry.step_key),
                                  STEP_CPU_SECONDS.pop((run_id, entry.step_key), None),
                                  entry.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS))
    return out


def timing_table(steps: list[StepTiming], min_seconds: float = 1.0) -> str:
    """The steps by wall time, longest first; those under `min_seconds` folded into one line; a total."""
    def row(name: str, wall: float, cpu: float | None) -> str:
        return f"{name:<40} {wall:>9.1f} {'-' if cpu is None else f'{cpu:.1f}':>9}"

    def cpu_sum(group: list[StepTiming]) -> float | None:
        return None if any(s.cpu_seconds is None for s in group) else sum(s.cpu_seconds for s in group)

    long = sorted((s for s in steps if s.wall_seconds >= min_seconds), key=lambda s: -s.wall_seconds)
    short = [s for s in steps if s.wall_seconds < min_seconds]
    lines = [f"{'step':<40} {'wall s':>9} {'CPU s':>9}"]
    lines += [row(s.step + ("" if s.ok else " (failed)"), s.wall_seconds, s.cpu_seconds) for s in long]
    if short:
        lines.append(row(f"{len(short)} steps under {min_seconds:g} s", sum(s.wall_seconds for s in short),
                         cpu_sum(short)))
    lines.append(row("total (steps)", sum(s.wall_seconds for s in steps), cpu_sum(steps)))
    return "\n".join(lines)


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, keys: list, partition: str | None = None,
             tags: dict | None = None) -> tuple[bool, str, list]:
    if env_name() == "test":
        # Tests run every step in the test process: nothing to start per step, each step's CPU seconds recorded.
        # Loggers named in run config replace Dagster's default console logger: name it, at the instance's level.
        loggers = {"console": {"config": {"log_level": instance.python_log_level or "DEBUG"}}, "step_cpu_clock": {}}
        run_config = {"loggers": loggers}  # torch threads as the test process has them
        result = job.execute_in_process(instance=instance, partition_key=partition, asset_selection=keys,
                                        run_config=run_config, raise_on_error=False, tags=tags)
        return result.success, result.run_id, result.all_events
    # The job's executor runs only for a job the workers can rebuild: the code location's `defs`, by module name.
    recon = ReconstructableRepository.for_module(definitions.__name__, "defs", str(REPO))
    if partition:
        tags = {**(tags or {}), **job.get_tags_for_partition_key(partition, selected_asset_keys=keys)}
    # What dg.execute_job does, plus the origin the UI's workspace gives the job: the run is listed under the
    # code location (Overview, the job's runs) and "Re-execute" launches it there.
    recon_job = recon.get_reconstructable_job(job.name)
    load_data = recon_job.repository.get_definition().repository_load_data
    recon_job = recon_job.with_repository_load_data(load_data)
    job_def = recon_job.get_definition()
    run = instance.create_run_for_job(
        job_def=job_def, tags={**job_def.run_tags, **(tags or {})}, asset_selection=frozenset(keys),
        job_code_origin=recon_job.get_python_origin(), remote_job_origin=workspace_job_origin(job.name),
        repository_load_data=load_data)
    with execute_run(recon_job, run, instance, raise_on_error=False) as result:
        return result.success, result.run_id, result.all_events


def workspace_job_origin(job_name: str, workspace: Path = WORKSPACE) -> RemoteJobOrigin | None:
    """The job's origin as the UI loads it from `workspace.yaml` (its code location and repository); None when
    the file is not there (an installed package run from elsewhere: its runs stay unattached, as before)."""
    if not workspace.exists():
        return None
    (location,) = WorkspaceFileTarget([str(workspace)]).create_origins()
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def step_failures(events: list) -> list[str]:
    """'<step>: <ErrorClass>: <message>' per failed step, from the first error that is not Dagster's wrapper
    ('Error occurred while executing op'): our DataError; newlines folded so each is one line. A run that failed
    outside its steps (e.g. a step that waited too long for a pool, `resources.runs.PoolWaitTimeout`) has one line
    '(run): ...' instead."""
    lines, run_lines = [], []
    for event in events:
        if event.is_step_failure:
            lines.append(_failure_line(event.step_key, event.step_failure_data.error))
        elif event.is_run_failure and event.job_failure_data is not None and event.job_failure_data.error:
            run_lines.append(_failure_line("(run)", event.job_failure_data.error))
    return lines or run_lines


def _failure_line(name: str, error) -> str:
    while error is not None and error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    if error is None:
        return f"{name}: failed (no error recorded)"
    if error.cls_name == "DagsterExecutionInterruptedError":
        return f"{name}: interrupted (SIGINT/SIGTERM); tables written before the stop are kept"
    message = error.message.strip()
    head, sep, rest = message.partition(": ")  # 'pkg.mod.DataError: text' -> 'text'
    if sep and head.rsplit(".", 1)[-1] == error.cls_name:
        message = rest
    text = " | ".join(line.strip() for line in message.splitlines() if line.strip())
    return f"{name}: {error.cls_name}: {text}" if error.cls_name else f"{name}: {text}"


def fail_runs_of_dead_processes(this_process: bool = False) -> list[str]:
    """Mark STARTED runs of `mmrec run` processes on this host that no longer exist as failed (a kill -9 or a
    lost machine leaves them STARTED forever), and release the pool slots of every finished run (else the next
    run waits on the `gpu` pool forever). With `this_process`, this process's own unfinished runs."""
    return reap_dead_runs(dg.DagsterInstance.get(), this_process)
