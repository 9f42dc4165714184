"""`mmrec`: run a dataset's assets through the project's Definitions, recorded in the Dagster instance.

    mmrec run --dataset sample [--select group:ingest] [--verbose]    (or: python -m resources.cli run ...)
    mmrec datasets
    mmrec ui [--port 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from mmrec_pipeline.instance import POSTGRES_ENVS, InstanceError, ensure_database, instance_yaml, postgres_url
from mmrec_pipeline.locks import file_lock
from mmrec_pipeline.registry import GENERATED_SOURCES, RegistryError, load_registry
from mmrec_pipeline.storage import Lake, write_text
from resources.runs import create_instance
from resources.ui import serve_ui


def instance_home() -> Path:
    """`DAGSTER_HOME` (default `$MMREC_HOME/dagster`, `dagster-<env>` for `deploy`/`k8s`), created with the
    project's instance settings: SQLite, or PostgreSQL (database created if missing) for `deploy`/`k8s`.
    A remote lake has no default: the instance folder (dagster.yaml, SQLite, compute logs) needs a file system."""
    env = os.environ.get("MMREC_ENV", "local")
    lake = Lake()
    if not lake.local and not os.environ.get("DAGSTER_HOME"):
        raise InstanceError(f"MMREC_HOME={lake.root} is object storage: set DAGSTER_HOME to a local folder for the "
                            "Dagster instance")
    default = lake.dagster_home(env if env in POSTGRES_ENVS else "") if lake.local else None
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(default)))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    # Runs started together on a new home would each create (and migrate) Dagster's databases: alembic fails
    # ("table alembic_version already exists") or leaves two heads. One process creates them; the others wait.
    with file_lock(home / ".mmrec-instance.lock",
                   on_wait=lambda: print(f"waiting for another process to set up the Dagster instance in {home}",
                                         file=sys.stderr)):
        if not config.exists():
            import torch

            write_text(instance_yaml(env, cuda=torch.cuda.is_available()), config)
        if env in POSTGRES_ENVS:
            if "postgres" not in config.read_text():
                raise InstanceError(f"{config} is an SQLite instance but MMREC_ENV={env} stores the instance in "
                                    f"PostgreSQL: point DAGSTER_HOME at an empty folder (e.g. {default})")
            ensure_database(postgres_url())
        create_instance()
    return home


def ui(port: int) -> int:
    """The Dagster UI on 127.0.0.1 with the same instance as `mmrec run` (resources/ui.py)."""
    home = instance_home()
    return serve_ui(port, Path(__file__).resolve().parent.parent, home)


def run(dataset: str, select: str | None, verbose: bool = False) -> int:
    specs = load_registry()
    if dataset not in specs:
        print(f"error: unknown dataset '{dataset}'; known: {', '.join(specs)}", file=sys.stderr)
        return 2
    instance_home()
    # The code location loads every asset (torch, the models): only `mmrec run` pays for it.
    from resources.runner import fail_runs_of_dead_processes, materialize_dataset, timing_table

    show_run_notices()
    for run_id in fail_runs_of_dead_processes():
        print(f"marked run {run_id} failed: its process is gone (killed?)", file=sys.stderr)
    # SIGTERM (a scheduler, `kill`) stops a run as Ctrl-C does: Dagster raises in the running step, records
    # the step and the run as failed, and atomic writes leave every table as it was.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    try:
        with contextlib.nullcontext() if verbose else brief_failures():
            outcome = materialize_dataset(dataset, select, tags=process_tags())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        for run_id in fail_runs_of_dead_processes(this_process=True):
            print(f"marked run {run_id} failed: interrupted", file=sys.stderr)
        print("interrupted: the run is recorded as failed; tables written before the stop are kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    ok, run_id, failures = outcome.ok, outcome.run_id, outcome.failures
    lake = Lake()
    refresh_catalog_or_warn(lake)
    if outcome.steps:
        print(f"\ntime per step (wall s from the run's events, steps side by side overlap; CPU s where a step ran in "
              f"this process)\n"
              f"{timing_table(outcome.steps)}\nwhole run: {time.perf_counter() - start:.1f} s wall")
    print(f"\nrun {'succeeded' if ok else 'FAILED'} for dataset '{dataset}' (run id {run_id})")
    catalog = f"   (DuckDB views: {lake.catalog})" if lake.local else ""
    print(f"tables:  {lake.dataset(dataset)}/*.parquet{catalog}")
    if lake.report(dataset).exists():
        print(f"report:  {lake.report(dataset)}")
    print(f"UI:      make ui   (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    recs = lake.table(dataset, "recommendations")
    if recs.exists():
        from mmrec_pipeline.serving import example_lists

        print(f"recommendations: {recs}")
        if lake.local:
            print(f"  DuckDB: select * from \"{dataset}\".recommendations_readable where user_id = ...")
            print(example_lists(lake.dataset_view(dataset)))
    if failures and not verbose:
        print("(full traces: mmrec run ... --verbose, or the run in the UI)", file=sys.stderr)
    for failure in failures:
        print(f"failed step {failure}", file=sys.stderr)
    return 0 if ok else 1


def show_run_notices() -> None:
    """Print what `resources.runs` says at INFO (a step waiting for a pool and who holds it, slots released):
    Dagster's console logger prints only the run's own events."""
    notices = logging.getLogger("mmrec.runs")
    if not notices.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s - mmrec - %(levelname)s - %(message)s"))
        notices.addHandler(handler)
        notices.setLevel(logging.INFO)
        notices.propagate = False  # printed once, whatever handlers the root logger has


def refresh_catalog_or_warn(lake: Lake) -> None:
    """The DuckDB views are a convenience: a failure to refresh them never fails a run whose steps succeeded.
    A remote lake has none (DuckDB would need httpfs)."""
    from mmrec_pipeline.catalog import refresh_catalog

    if not lake.local or not lake.root.exists():
        return
    try:
        refresh_catalog(lake)
    except Exception as e:  # noqa: BLE001 - any catalog problem is a warning
        print(f"warning: DuckDB catalog not refreshed: {e}", file=sys.stderr)


def process_tags() -> dict[str, str]:
    """Tags that let a later `mmrec run` tell whether this run's process is still alive."""
    return {"mmrec/pid": str(os.getpid()), "mmrec/host": socket.gethostname()}


class _BriefLogger(logging.Logger):
    """Dagster's console logger with failure events cut to their first line: the traceback stays in the
    instance (the UI, --verbose), and `mmrec run` prints the root cause at the end."""

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and getattr(record, "dagster_event", None) is not None \
                and isinstance(record.msg, str) and "\n" in record.msg:
            record.msg = record.msg.split("\n", 1)[0] + " (cause at the end; --verbose for the trace)"
        super().handle(record)


@contextlib.contextmanager
def brief_failures():
    # Dagster builds its console logger with logging.getLoggerClass() when a run starts.
    previous = logging.getLoggerClass()
    logging.setLoggerClass(_BriefLogger)
    try:
        yield
    finally:
        logging.setLoggerClass(previous)


def datasets() -> int:
    lake = Lake()
    print(f"{'dataset':<22} {'source':<9} {'split':<9} {'data':<8} {'materialized':<13} path")
    for spec in load_registry().values():
        present = spec.source in GENERATED_SOURCES or spec.data_dir(lake).exists()
        folder = lake.dataset(spec.name)
        tables = sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []
        print(f"{spec.name:<22} {spec.source:<9} {spec.split:<9} {'present' if present else 'absent':<8} "
              f"{(str(len(tables)) + ' tables') if tables else '-':<13} {spec.data_dir(lake)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmrec", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize a dataset's assets")
    p_run.add_argument("--dataset", required=True)
    p_run.add_argument("--select", help="Dagster asset selection, e.g. 'group:ingest', 'split+',\n"
                       "'key:items or key:users'; commas make a union: 'items,users'")
    p_run.add_argument("--verbose", action="store_true", help="print full tracebacks of failed steps")
    sub.add_parser("datasets", help="list the registry and each dataset's status")
    p_ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    p_ui.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args.dataset, args.select, args.verbose)
        if args.command == "ui":
            return ui(args.port)
        return datasets()
    except (RegistryError, InstanceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
