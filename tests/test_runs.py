"""Runs that die, wait on a pool, or start together (issue 33): a killed run does not block the next one, a step
waiting on a pool names the holder and gives up in time, a step whose run process died stops, two processes set
up a new instance together, two runs do not compute the same feature items twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from mmrec_pipeline.storage import Lake, pid_alive

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def started_run(instance: dg.DagsterInstance, pid: int) -> DagsterRun:
    run = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                     tags={"mmrec/pid": str(pid), "mmrec/host": socket.gethostname()})
    instance.add_run(run)
    return run


@pytest.fixture
def instance():
    from resources.cli import instance_home

    instance_home()
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_a_killed_run_releases_its_pool_slots(instance):
    """The issue's case: a run killed -9 holds the only slot of a pool; the next run's start frees it."""
    from resources.runner import fail_runs_of_dead_processes

    storage, pool = instance.event_log_storage, f"pool-{uuid.uuid4().hex[:6]}"
    storage.set_concurrency_slots(pool, 1)
    killed = started_run(instance, dead_pid())
    assert storage.claim_concurrency_slot(pool, killed.run_id, "image_embeddings").is_claimed
    waiting = str(uuid.uuid4())
    assert not storage.claim_concurrency_slot(pool, waiting, "image_embeddings").is_claimed
    assert killed.run_id in fail_runs_of_dead_processes()
    assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert storage.claim_concurrency_slot(pool, waiting, "image_embeddings").is_claimed
    storage.free_concurrency_slots_for_run(waiting)


def pool_job(pool: str) -> dg.JobDefinition:
    @dg.op(pool=pool)
    def gpu_step() -> int:
        return 1

    @dg.job(executor_def=dg.in_process_executor)
    def pooled():
        gpu_step()

    return pooled


def test_a_step_waiting_on_a_pool_names_the_holder_and_gives_up(instance, monkeypatch, caplog):
    from resources.runner import step_failures

    storage, pool = instance.event_log_storage, f"pool-{uuid.uuid4().hex[:6]}"
    storage.set_concurrency_slots(pool, 1)
    holder = started_run(instance, os.getppid())  # a live process: its slot is really taken
    assert storage.claim_concurrency_slot(pool, holder.run_id, "image_embeddings").is_claimed
    monkeypatch.setenv("MMREC_POOL_WAIT_S", "1.5")
    start = time.process_time()
    with caplog.at_level("INFO", logger="mmrec.runs"):
        result = pool_job(pool).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"waits for pool '{pool}', held by run {holder.run_id} (step image_embeddings)" in m
               for m in messages), messages
    (line,) = step_failures(result.all_events)  # what `mmrec run` prints at the end
    assert line.startswith("(run): PoolWaitTimeout: step gpu_step waited ") and holder.run_id in line, line
    assert time.process_time() - start < 1.2  # waited 1.5 s without spinning a core
    storage.free_concurrency_slots_for_run(holder.run_id)


def test_a_step_waiting_on_a_holder_that_died_proceeds(instance, monkeypatch):
    storage, pool = instance.event_log_storage, f"pool-{uuid.uuid4().hex[:6]}"
    storage.set_concurrency_slots(pool, 1)
    holder = started_run(instance, dead_pid())  # killed after it claimed, while the next run waits
    assert storage.claim_concurrency_slot(pool, holder.run_id, "image_embeddings").is_claimed
    monkeypatch.setenv("MMREC_POOL_WAIT_S", "30")
    result = pool_job(pool).execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.FAILURE


CHAIN = """
import multiprocessing, os, sys, time


def step(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["resources.executors"])  # as the local executor's forkserver preloads it
    ctx.Process(target=step, args=(sys.argv[1],)).start()
    time.sleep(120)
"""


def test_a_step_process_stops_when_its_run_process_is_killed(tmp_path):
    """kill -9 of the run process alone (not its group): the step process it started through the forkserver
    stops within seconds instead of running on."""
    script, pid_file = tmp_path / "chain.py", tmp_path / "step.pid"
    script.write_text(textwrap.dedent(CHAIN))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, str(script), str(pid_file)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        step = int(pid_file.read_text())
        time.sleep(3)  # the watch has found its parent, and leaves the step alone while the parent lives
        assert alive(step)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        # the interrupt stops it within seconds; STOP_GRACE_S later it is ended even if the interrupt was lost
        # (a loaded machine): either way it stops, where without the watch it would sleep on for two minutes
        from resources.runs import STOP_GRACE_S

        deadline = time.monotonic() + STOP_GRACE_S + 15
        while alive(step) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(step), "the step process outlived its run process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return pid_alive(pid)
    return state != "Z"


SET_UP = """
import sys, time
from pathlib import Path
import dagster as dg, torch  # imported before the start signal: both set the instance up at the same moment
import resources.runs
from resources.cli import instance_home
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
instance_home()
with dg.DagsterInstance.get() as instance:
    instance.add_run(dg._core.storage.dagster_run.DagsterRun(job_name="j", run_id=sys.argv[2]))
"""


def test_two_processes_set_up_a_new_instance_together(tmp_path):
    """Two `mmrec run`s started at once on a new home: one creates the databases, the other waits; both record
    their run and the instance works afterwards (no 'alembic_version already exists', no second head)."""
    home, go = tmp_path / "home", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMREC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
           "OMP_NUM_THREADS": "1"}
    ids = [str(uuid.uuid4()) for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", SET_UP, str(go), i], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in ids]
    time.sleep(15)  # both have imported what they need and wait for the signal
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert {r.run_id for r in instance.get_runs()} == set(ids)
        assert list(instance.all_instigator_state()) == []  # the schedule storage opens
    for db in ("history/runs", "schedules/schedules", "history/runs/index"):
        with sqlite3.connect(home / "dagster" / f"{db}.db") as conn:  # one alembic head each
            assert len(conn.execute("select version_num from alembic_version").fetchall()) == 1, db


def test_two_runs_do_not_compute_the_same_feature_items(tmp_path):
    """Two runs (threads here: flock locks conflict between separate opens of the file, as between processes)
    fill one store from the same items: every item is computed once, and each run returns every item's value."""
    import threading

    import polars as pl

    from mmrec_pipeline.features.cache import FeatureCache, compute_incremental

    items = pl.DataFrame({"item_id": [f"i{n}" for n in range(40)], "text": [f"t{n}" for n in range(40)]})
    cache = FeatureCache(Lake(tmp_path).feature_cache(), "text", "toy", {"v": 1}, {"length": pl.Int64})
    computed: list[str] = []
    results = {}

    def compute(chunk: pl.DataFrame) -> pl.DataFrame:
        computed.extend(chunk["item_id"])
        time.sleep(0.05)  # long enough for the other run to reach the same chunk
        return pl.DataFrame({"length": chunk["text"].str.len_chars().cast(pl.Int64)})

    def run(name: str) -> None:
        results[name] = compute_incremental(items, lambda r: r["text"], compute, cache, chunk_size=8)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(computed) == sorted(items["item_id"])  # each once
    for table, stats in results.values():
        assert table["length"].to_list() == [len(t) for t in items["text"]]
        assert stats["failed"] == 0 and stats["remaining"] == 0
    assert sum(stats["computed"] for _, stats in results.values()) == 40


def _side_by_side(*calls) -> list:
    """Run `calls` in threads started together (flock locks conflict between threads as between processes);
    their results in order."""
    import threading

    results = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_first_feature_runs_pin_one_dtype(tmp_path, monkeypatch):
    """Two first feature runs of a dataset on machines whose 'auto' differs (a bf16 and a float32 CPU, one thread
    each here) pin one dtype and both compute in it."""
    import threading

    from mmrec_pipeline import compute as compute_module
    from mmrec_pipeline.compute import Compute, pin_feature_dtype

    def native_bf16() -> bool:  # slow to answer: the other run reads the pin meanwhile
        time.sleep(0.2)
        return threading.current_thread() is threads[0]

    monkeypatch.setattr(compute_module, "cpu_has_native_bf16", native_bf16)
    pin, auto, dtypes = Lake(tmp_path).feature_dtype("shop"), Compute(device="cpu", dtype="auto"), []
    threads = [threading.Thread(target=lambda: dtypes.append(pin_feature_dtype(auto, pin).dtype)) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(dtypes)) == 1 and dtypes[0] == json.loads(pin.read_text())["dtype"]


def test_two_runs_convert_the_summarizer_once(tmp_path, monkeypatch):
    from mmrec_pipeline.features import summaries
    from mmrec_pipeline.weights import ModelSources

    conversions = []

    def dequantize(gguf, out):
        conversions.append(out)
        time.sleep(0.3)  # the other run arrives meanwhile
        out.mkdir()
        (out / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(summaries, "_dequantize_gguf", dequantize)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    sources, cache = ModelSources(summarizer=str(gguf)), Lake(tmp_path).feature_cache()
    folders = _side_by_side(*[lambda: summaries.summarizer_source(sources, cache)] * 2)
    assert len(conversions) == 1 and folders == [str(summaries.converted_summarizer_dir(sources, cache))] * 2


def test_compactions_of_one_store_take_turns(tmp_path):
    import polars as pl

    from mmrec_pipeline.features.cache import FeatureCache

    cache = FeatureCache(Lake(tmp_path).feature_cache(), "text", "toy", {"v": 1}, {"length": pl.Int64})
    for n in range(3):
        cache.append(pl.DataFrame({"item_id": [f"i{n}"], "key": [f"k{n}"], "length": [n]}))
    assert sorted(_side_by_side(cache.compact, cache.compact)) == [0, 3]  # the second found them merged
    assert len(cache.parts()) == 1 and cache.read().height == 3


def test_a_cli_run_belongs_to_the_workspace_code_location(tmp_path):
    """`mmrec run` (local executor, as `make demo`) records its run with the origin the UI loads from
    workspace.yaml: listed under that code location, and re-executable there."""
    from test_bad_input import tiny_recbole

    from resources.runner import WORKSPACE

    tiny_recbole(tmp_path / "data" / "tiny")
    (tmp_path / "datasets.yaml").write_text("datasets:\n  tiny:\n    source: recbole\n    path: tiny\n    split: loo\n")
    lake = tmp_path / "lake"
    env = {**os.environ, "MMREC_DATA": str(tmp_path / "data"), "MMREC_DATASETS": str(tmp_path / "datasets.yaml"),
           "MMREC_HOME": str(lake), "DAGSTER_HOME": str(lake / "dagster"), "MMREC_ENV": "local",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "resources.cli", "run", "--dataset", "tiny", "--select", "items"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    (location,) = WorkspaceFileTarget([str(WORKSPACE)]).create_origins()
    with dg.DagsterInstance.from_config(str(lake / "dagster")) as instance:
        (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.SUCCESS
    origin = run.remote_job_origin
    assert origin.location_name == location.location_name == "assets.definitions"
    assert origin.repository_origin.repository_name == "__repository__" and origin.job_name == "__ASSET_JOB"
    assert run.tags_for_storage()[".dagster/repository"] == "__repository__@assets.definitions"


def test_mmrec_ui_serves_the_code_location_on_localhost_and_stops_its_services(tmp_path):
    """`mmrec ui`: Dagster's code server, daemon and webserver (not the superseded `dagster dev`), on 127.0.0.1;
    the UI lists the workspace's code location loaded; SIGTERM stops all three."""
    import json
    import urllib.request

    from resources.ui import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMREC_HOME": str(tmp_path), "MMREC_ENV": "local",
           "DAGSTER_HOME": str(tmp_path / "dagster"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "resources.cli", "ui", "--port", str(port)], env=env,
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    # The repository the CLI's runs name (test_a_cli_run_belongs_to_the_workspace_code_location) is the UI's.
    query = {"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                      "locationOrLoadError { __typename } } } } repositoryOrError(repositorySelector: "
                      '{repositoryLocationName: "assets.definitions", repositoryName: "__repository__"}) '
                      "{ __typename } }"}
    try:
        deadline, entries = time.monotonic() + 400, None
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", json.dumps(query).encode(),
                                                 {"Content-Type": "application/json"})
                data = json.load(urllib.request.urlopen(request, timeout=10))["data"]
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    break
            except OSError:
                pass
            time.sleep(2)
        assert entries == [{"name": "assets.definitions", "loadStatus": "LOADED",
                            "locationOrLoadError": {"__typename": "RepositoryLocation"}}], log.read_text()[-3000:]
        assert data["repositoryOrError"] == {"__typename": "Repository"}
        assert "superseded" not in log.read_text().lower()
        ui.terminate()
        assert ui.wait(timeout=60) != 0
        children = subprocess.run(["pgrep", "-s", str(ui.pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        assert children == [], log.read_text()[-2000:]  # no service outlives `mmrec ui`
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)


def test_a_step_queued_behind_its_own_run_waits_without_a_deadline(instance, monkeypatch):
    """On a GPU machine (pool limit 1) a run's second `gpu` step waits for its first, however long that takes;
    the deadline counts only time blocked by other runs."""
    from resources import runs

    storage, pool = instance.event_log_storage, f"pool-{uuid.uuid4().hex[:6]}"
    storage.set_concurrency_slots(pool, 1)
    run = started_run(instance, os.getpid())
    monkeypatch.setenv("MMREC_POOL_WAIT_S", "0.3")
    monkeypatch.setattr(runs, "REPORT_EVERY_S", 0.0)
    context = runs.PoolWaitingConcurrencyContext(instance, run)
    assert context.claim(pool, "image_embeddings")
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        assert not context.claim(pool, "captions")  # blocked by its own step: no PoolWaitTimeout
    context.free_step("image_embeddings")
    assert context.claim(pool, "captions")
    storage.free_concurrency_slots_for_run(run.run_id)
