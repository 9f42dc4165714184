"""`mmrec`: run a dataset's assets through the project's Definitions, recorded in the Dagster instance.

    mmrec run --dataset sample [--select group:ingest]
    mmrec datasets
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmrec_pipeline.registry import RegistryError, lake_root, load_registry

# GPU-heavy assets run in pool `gpu`; only they use a pool, so the default limit is the GPU's.
INSTANCE_YAML = """telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


def instance_home() -> Path:
    """`DAGSTER_HOME` (default `$MMREC_HOME/dagster`), created with the project's instance settings."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(lake_root() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return home


def ui(port: int) -> int:
    """`dagster dev` on 127.0.0.1 with the same instance as `mmrec run`."""
    instance_home()
    cmd = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
           "-p", str(port)]
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execv(cmd[0], cmd)


def run(dataset: str, select: str | None) -> int:
    specs = load_registry()
    if dataset not in specs:
        print(f"error: unknown dataset '{dataset}'; known: {', '.join(specs)}", file=sys.stderr)
        return 2
    instance_home()
    from mmrec_pipeline.definitions import materialize_dataset
    from mmrec_pipeline.lake import refresh_catalog

    try:
        ok, run_id, failures = materialize_dataset(dataset, select)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = lake_root()
    if root.exists():
        refresh_catalog(root)
    print(f"\nrun {'succeeded' if ok else 'FAILED'} for dataset '{dataset}' (run id {run_id})")
    print(f"tables:  {root / dataset}/*.parquet   (DuckDB views: {root / 'lake.duckdb'})")
    report = root / dataset / "report.html"
    if report.exists():
        print(f"report:  {report}")
    print(f"UI:      make ui   (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    recs = root / dataset / "recommendations.parquet"
    if recs.exists():
        from mmrec_pipeline.serving import example_lists

        print(f"recommendations: {recs}\n  DuckDB: select * from \"{dataset}\".recommendations_readable where user_id = ...")
        print(example_lists(root / dataset))
    for failure in failures:
        print(f"failed step {failure}", file=sys.stderr)
    return 0 if ok else 1


def datasets() -> int:
    root = lake_root()
    print(f"{'dataset':<22} {'source':<9} {'split':<9} {'data':<8} {'materialized':<13} path")
    for spec in load_registry().values():
        present = spec.source == "sample" or spec.data_dir().exists()
        tables = sorted(p.stem for p in (root / spec.name).glob("*.parquet")) if (root / spec.name).exists() else []
        print(f"{spec.name:<22} {spec.source:<9} {spec.split:<9} {'present' if present else 'absent':<8} "
              f"{(str(len(tables)) + ' tables') if tables else '-':<13} {spec.data_dir()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmrec", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize a dataset's assets")
    p_run.add_argument("--dataset", required=True)
    p_run.add_argument("--select", help="Dagster asset selection, e.g. 'group:ingest' or 'split+'")
    sub.add_parser("datasets", help="list the registry and each dataset's status")
    p_ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    p_ui.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args.dataset, args.select)
        if args.command == "ui":
            return ui(args.port)
        return datasets()
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
