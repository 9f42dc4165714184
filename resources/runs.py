"""Runs that died and the pool slots they hold; steps that wait on a pool; steps whose run process died.

- `reap_dead_runs`: a run whose `mmrec run` process is gone (kill -9, a reboot) stays STARTED and keeps the pool
  slots its steps claimed, so every later run would wait on the `gpu` pool forever. It is marked failed and every
  slot of a finished run is released (what the daemon's `free_slots_after_run_end_seconds` does, for runs without
  a daemon).
- `PoolWaitingConcurrencyContext`: a step blocked on a pool names the run(s) holding it at INFO, releases the
  slots of holders that died meanwhile, waits without spinning a core and gives up after `MMREC_POOL_WAIT_S`.
- `watch_run_process`: a step process stops (as on Ctrl-C) when the run process that started it is gone.
- `step_cpu_clock`: the logger that records each in-process step's CPU seconds for `mmrec run`'s timing table.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time

import dagster as dg
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

from mmrec_pipeline.storage import pid_alive

POOL_WAIT_ENV = "MMREC_POOL_WAIT_S"
DEFAULT_POOL_WAIT_S = 2 * 3600.0  # long enough for another run's image embeddings of a large catalog
REPORT_EVERY_S = 60.0  # how often a waiting step repeats who holds the pool (and looks for dead holders)
BLOCKED_SLEEP_S = 0.2
PARENT_POLL_S = 1.0
STOP_GRACE_S = 30.0  # after the interrupt, the time a step has to record its failure before it is ended

log = logging.getLogger("mmrec.runs")


# (run id, step key) -> CPU seconds of the steps that ran in this process (in-process runs: MMREC_ENV=test).
STEP_CPU_SECONDS: dict[tuple[str, str], float] = {}


class _StepCpuClock(logging.Handler):
    """This process's CPU time (every thread) between a step's start and end events. Steps of an in-process run
    execute one at a time, so the difference is the step's own CPU time, which a shared machine's load does not
    inflate as it does wall time."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.started: dict[tuple[str, str], float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        if event is None or not event.step_key:
            return
        key = (record.dagster_meta["run_id"], event.step_key)
        if event.is_step_start:
            self.started[key] = time.process_time()
        elif (event.is_step_success or event.is_step_failure) and key in self.started:
            STEP_CPU_SECONDS[key] = time.process_time() - self.started.pop(key)


@dg.logger(description="Records each step's CPU seconds for the timing table that `mmrec run` prints.")
def step_cpu_clock(_context) -> logging.Logger:
    # A logger of its own per run, outside the logging tree (as Dagster's console logger): nothing propagates.
    clock = logging.Logger("mmrec.step_cpu_clock", logging.DEBUG)  # noqa: LOG001
    clock.addHandler(_StepCpuClock())
    return clock



class PoolWaitTimeout(RuntimeError):
    """A step waited longer than `MMREC_POOL_WAIT_S` for a pool slot."""


def pool_wait_seconds() -> float:
    raw = os.environ.get(POOL_WAIT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_POOL_WAIT_S
    except ValueError:
        raise ValueError(f"{POOL_WAIT_ENV}={raw!r} is not a number of seconds") from None


def reap_dead_runs(instance: dg.DagsterInstance, this_process: bool = False) -> list[str]:
    """Mark STARTED runs of `mmrec run` processes on this host that no longer exist as failed (with
    `this_process`, this process's own unfinished runs), then release the pool slots of every finished run.
    Returns the ids of the runs marked failed."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                   tags={"mmrec/host": socket.gethostname()}))
    failed = []
    for r in runs:
        pid = r.tags.get("mmrec/pid", "")
        mine = pid == str(os.getpid())
        gone = mine if this_process else (pid.isdigit() and not mine and not pid_alive(int(pid)))
        if gone:
            instance.report_run_failed(r, f"mmrec run process {pid} on {r.tags['mmrec/host']} is gone")
            failed.append(r.run_id)
    free_slots_of_finished_runs(instance)
    return failed


def pool_holders(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """{run id: pools} of every run that holds or waits for a slot."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    holders: dict[str, set[str]] = {}
    for pool, info in storage.get_concurrency_infos(list(storage.get_concurrency_keys())).items():
        for run_id in {s.run_id for s in info.claimed_slots} | {s.run_id for s in info.pending_steps}:
            holders.setdefault(run_id, set()).add(pool)
    return holders


def free_slots_of_finished_runs(instance: dg.DagsterInstance) -> list[str]:
    """Release the slots (claimed or queued) of runs that have finished or no longer exist; returns their ids."""
    freed = []
    for run_id in pool_holders(instance):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            freed.append(run_id)
            log.info(f"released the pool slots of finished run {run_id}")
    return freed


class PoolWaitingConcurrencyContext(InstanceConcurrencyContext):
    """Dagster's per-run pool claims, plus: a blocked step says who holds the pool, waits without spinning and
    gives up after `MMREC_POOL_WAIT_S`.

    Dagster 1.13's executor loops retry a blocked claim without sleeping when no other step of the run is in
    flight (`interval_to_next_pending_claim_check` is never positive): one core at 100% for as long as the wait
    lasts. A short sleep per blocked claim costs nothing when other steps run (their events wait at most that)."""

    def __init__(self, instance: dg.DagsterInstance, dagster_run):
        super().__init__(instance, dagster_run)
        self._run = dagster_run
        self._blocked: dict[str, tuple[float, float]] = {}  # step -> (waiting since, last reported)
        self._wait_s = pool_wait_seconds()

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        if super().claim(concurrency_key, step_key, step_priority):
            self._blocked.pop(step_key, None)
            return True
        now = time.monotonic()
        since, reported = self._blocked.get(step_key, (now, -REPORT_EVERY_S))
        holders = None
        if now - reported >= REPORT_EVERY_S:
            reap_dead_runs(self._instance)  # a holder killed meanwhile frees its slots: the next claim gets one
            holders, others = self._holders(concurrency_key)
            if not others:  # queued behind this run's own steps: the executor's normal order, not a wait
                since = now
            self._report(f"step {step_key} waits for pool '{concurrency_key}', held by {holders}; it gives up "
                         f"after {self._wait_s:g} s on other runs ({POOL_WAIT_ENV})")
            reported = now
        self._blocked[step_key] = (since, reported)
        if now - since > self._wait_s:
            holders = holders or self._holders(concurrency_key)[0]
            raise PoolWaitTimeout(
                f"step {step_key} waited {now - since:.0f} s for a slot of pool '{concurrency_key}', held by "
                f"{holders}; raise {POOL_WAIT_ENV} to wait longer, or end the holding run (a run whose process "
                "is gone is released by the next `mmrec run`; the UI's Pools page releases any)")
        time.sleep(BLOCKED_SLEEP_S)
        return False

    def _holders(self, pool: str) -> tuple[str, bool]:
        """Who holds the pool's slots, readable; whether another run holds one."""
        slots = self._instance.event_log_storage.get_concurrency_info(pool).claimed_slots
        text = ", ".join(f"{'this run' if s.run_id == self._run_id else 'run ' + s.run_id} (step {s.step_key})"
                         for s in slots)
        return text or "nobody (slots being released)", any(s.run_id != self._run_id for s in slots)

    def _report(self, message: str) -> None:
        log.info(message)
        self._instance.report_engine_event(message, self._run)  # the run's log in the UI


def use_pool_waiting_context() -> None:
    """Make Dagster's local executors (multiprocess, in-process) claim pool slots through
    `PoolWaitingConcurrencyContext`; they look the class up by name in their own modules."""
    from dagster._core.executor import in_process, multiprocess

    multiprocess.InstanceConcurrencyContext = PoolWaitingConcurrencyContext
    in_process.InstanceConcurrencyContext = PoolWaitingConcurrencyContext


# ---------------------------------------------------------------- step processes whose run process died


def _watch_parent() -> None:
    """In a process started by multiprocessing: once its parent (the run process) is gone, interrupt this
    process as Dagster's own termination does (SIGINT: the step records its failure, atomic writes leave every
    table as it was), and end it if it has not stopped `STOP_GRACE_S` later."""
    deadline = time.monotonic() + 30.0
    parent = None
    while parent is None:  # set by multiprocessing's bootstrap, just after the fork
        parent = multiprocessing.parent_process()
        if parent is None and time.monotonic() > deadline:
            return  # a plain fork, not a multiprocessing child: nothing to watch
        time.sleep(PARENT_POLL_S)
    # By pid: a forkserver child's parent sentinel is not the run process's life. A parent not yet reaped (a
    # zombie) still counts as alive: the step then runs on, as it did before this watch.
    while pid_alive(parent.pid):
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(STOP_GRACE_S)
    os._exit(1)


def _start_parent_watch() -> None:
    threading.Thread(target=_watch_parent, name="mmrec-parent-watch", daemon=True).start()


def watch_run_process() -> None:
    """Every process forked from this one (the local executor's forkserver forks each step process) stops when
    the process that started it via multiprocessing dies: a `kill -9` of `mmrec run` no longer leaves its steps
    running and writing."""
    os.register_at_fork(after_in_child=_start_parent_watch)


# ---------------------------------------------------------------- the instance


def create_instance() -> None:
    """Open the instance in DAGSTER_HOME once, so that Dagster creates its databases and stamps their schema
    (it does on first open) here, under the caller's lock, rather than in every process a run starts."""
    with dg.DagsterInstance.get():  # builds the run, event log and schedule storages
        pass
