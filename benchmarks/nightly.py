"""The nightly increment (issue 34): what one more day of `hm-synthetic` transactions costs through the declarative
refresh, against the full build of the same assets.

    python benchmarks/nightly.py [--scale 0.1] [--lake /tmp/nightly-lake]

In a fresh lake, with a copy of datasets.yaml whose `hm-synthetic` entry has the given scale:
1. full build: `raw_files` observed, the automation evaluated, and the requested assets of ASSETS materialized in
   one in-process run, the feature cache empty;
2. the night: the entry gains `extra_days: 1`, `raw_files` observed again (it appends the day to a copy of the
   release), the automation evaluated, and the requested assets of ASSETS materialized.
Each requested asset is listed with why (the upstream assets requested with it, or the raw files' new data
version), each step of ASSETS with its wall time, and the feature assets with the items they computed and reused.
The other requested assets (the models not measured here) are recorded as materialized without running, so the
conditions of what reads them resolve as after a full run. Steps run one at a time with the `local` environment's
resources (`ComputeResource`: torch threads per step as `mmrec run` sets them). Results: printed and saved to
`benchmarks/results/nightly.json` with the machine (benchmarks/machine.py), the load when each phase started and
the phase's CPU time (this process's: the run is in-process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = ROOT / "benchmarks" / "results" / "nightly.json"
DATASET = "hm-synthetic"
ASSETS = ("items", "users", "interactions", "split", "image_embeddings", "captions", "review_summaries",
          "text_embeddings", "popularity", "item_knn", "metrics", "champion", "recommendations")
FEATURE_STATS = ("computed", "reused", "remaining")


def write_registry(path: Path, base: str, scale: float, extra_days: int) -> None:
    import yaml

    raw = yaml.safe_load(base)
    raw["datasets"][DATASET]["options"] = {"scale": scale, "seed": 0, "extra_days": extra_days}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


class Night:
    """One instance, its automation cursor and the asset graph: evaluate, then run what was requested."""

    def __init__(self):
        import dagster as dg

        from assets import evaluation, features, ingest, models, ranker, serving, splits
        from assets.definitions import defs

        self.defs, self.graph = defs, defs.resolve_asset_graph()
        self.assets = dg.load_assets_from_modules([ingest, splits, features, models, ranker, evaluation, serving])
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor, self.clock = None, dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.UTC)

    def tick(self) -> set[str]:
        import dagster as dg

        self.clock += dt.timedelta(minutes=1)
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor,
                                                   evaluation_time=self.clock)
        self.cursor = result.cursor
        return {ap.asset_key.to_user_string() for r in result.results
                for ap in r.true_subset.expensively_compute_asset_partitions() if ap.partition_key == DATASET}

    def observe(self) -> float:
        from dagster._core.definitions.observe import observe

        from assets.ingest import raw_files
        from resources import resources_for_env

        t0 = time.perf_counter()
        # generates the files if missing
        observe([raw_files], instance=self.instance, partition_key=DATASET, resources=resources_for_env())
        return time.perf_counter() - t0

    def why(self, requested: set[str]) -> dict[str, str]:
        """Per requested asset: the upstream assets requested with it, else (ingest) the raw files' new version."""
        out = {}
        for name in sorted(requested):
            parents = sorted(k.to_user_string() for k in self.graph.get(self._key(name)).parent_keys)
            changed = [p for p in parents if p in requested]
            out[name] = ("upstream updated: " + ", ".join(changed) if changed else
                         "raw_files: new data version" if "raw_files" in parents else "missing or code changed")
        return out

    def run(self, requested: set[str]) -> tuple[float, dict, dict]:
        """Materialize the requested assets of ASSETS in one in-process run; the rest recorded as materialized.
        Returns the run's wall time, each step's wall time and the feature assets' computed/reused counts."""
        import dagster as dg

        from resources import resources_for_env

        selected = requested & set(ASSETS)
        t0 = time.perf_counter()
        result = dg.materialize(self.assets, selection=dg.AssetSelection.assets(*selected), partition_key=DATASET,
                                instance=self.instance, resources=resources_for_env())
        wall = time.perf_counter() - t0
        if not result.success:
            raise RuntimeError(f"run {result.run_id} failed")
        for name in sorted(requested - selected):
            self.instance.report_runless_asset_event(dg.AssetMaterialization(self._key(name), partition=DATASET))
        starts, steps = {}, {}
        for entry in self.instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                steps[event.step_key] = round(entry.timestamp - starts[event.step_key], 1)
        stats = {}
        for event in result.get_asset_materialization_events():
            m = event.event_specific_data.materialization
            found = {k: m.metadata[k].value for k in FEATURE_STATS if k in m.metadata}
            if found:
                stats[m.asset_key.to_user_string()] = found
        return wall, steps, stats

    def _key(self, name: str):
        import dagster as dg

        return dg.AssetKey(name)


def cpu_seconds() -> float:
    """This process's CPU time (user + system): the run is in-process, so a phase's difference is its own."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def phase(night: Night) -> dict:
    load, cpu = round(os.getloadavg()[0], 2), cpu_seconds()
    observe_s = night.observe()
    requested = night.tick()
    why = night.why(requested)
    wall, steps, stats = night.run(requested)
    cpu = cpu_seconds() - cpu
    if night.tick():
        print("note: the automation still requests assets after the run", flush=True)
    return {"load_1m_at_start": load, "observe_s": round(observe_s, 1), "run_wall_s": round(wall, 1),
            "total_wall_s": round(observe_s + wall, 1), "total_cpu_s": round(cpu, 1),
            "ran": {a: why[a] for a in ASSETS if a in requested},
            "recorded_not_run": sorted(requested - set(ASSETS)), "step_wall_s": steps, "features": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--lake", default="/tmp/nightly-lake", help="a fresh lake root (must not exist)")
    args = parser.parse_args()
    lake = Path(args.lake).resolve()
    if lake.exists():
        sys.exit(f"{lake} exists: the full build needs an empty lake and feature cache")
    os.environ["MMREC_HOME"] = str(lake)
    os.environ.setdefault("DAGSTER_HOME", str(lake / "dagster"))
    lake.mkdir(parents=True)
    from mmrec_pipeline.registry import registry_path

    base = registry_path().read_text()
    registry = lake / "datasets.yaml"
    os.environ["MMREC_DATASETS"] = str(registry)
    write_registry(registry, base, args.scale, 0)

    from machine import machine_info

    from resources import COMPUTE, env_name

    machine = {**machine_info(), "torch_threads_per_step": COMPUTE[env_name()].cpu_threads}
    night = Night()
    night.tick()  # the first evaluation: nothing observed yet
    full = phase(night)
    print(f"full build: {full['total_wall_s']} s, CPU {full['total_cpu_s']} s (observe {full['observe_s']} s), "
          f"steps {full['step_wall_s']}", flush=True)
    write_registry(registry, base, args.scale, 1)
    increment = phase(night)
    print(f"one more day: {increment['total_wall_s']} s, CPU {increment['total_cpu_s']} s "
          f"(observe + append {increment['observe_s']} s), "
          f"steps {increment['step_wall_s']}", flush=True)
    for name, reason in increment["ran"].items():
        print(f"  {name:<18} {reason}  {increment['features'].get(name, '')}")
    print(f"  recorded without running: {', '.join(increment['recorded_not_run'])}")
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    doc["runs"][f"{args.scale:g}"] = {
        "machine": machine,
        "executor": "in_process (dg.materialize): one step at a time",
        "assets_measured": list(ASSETS), "full_build": full, "one_more_day": increment}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2, default=str))


if __name__ == "__main__":
    main()
