"""Cost curve of the pipeline on H&M-shaped data (`hm-synthetic`) at growing scale: wall time and peak RSS per stage.

    python benchmarks/scale.py [--scales 0.01 0.1 1.0] [--lake /tmp/scale-lake] [--threads 2]

Stages, each in its own child process (so its peak RSS is its own: `os.wait4`'s ru_maxrss), reading what the
previous stage wrote to the lake: generate (the Kaggle files) -> ingest (the real hm reader + validation ->
items/users/interactions parquet) -> split (5-core on users, temporal split, the three split checks) ->
popularity, item_knn, bpr_mf (fit on train, checkpoint) -> evaluate (the three checkpoints, full-catalog ranking,
batched, through evaluate_model: plain, +cold and +sampled:100; where there are more than `--eval-users` test users
a seeded sample of that many is ranked, and the protocol says so: `temporal+users:50000`).
item_knn_top12 (after item_knn): every active user's top-12 through serving.write_top_k in batches of 1024, its
users/s and a fingerprint of the lists (so a faster score path can be shown to give the same lists).
BPR-MF runs `--bpr-epochs` epoch(s) with `--bpr-batch` triples per step (no early stopping at 1 epoch).
A stage that fails or runs past `--stage-timeout` is recorded with its error; later stages of that scale are
skipped. Results: a printed table and `benchmarks/results/scale.json` (CPU model/flags, load at start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
STAGES = ("generate", "ingest", "split", "popularity", "item_knn", "bpr_mf", "evaluate", "item_knn_top12")
MODELS = ("popularity", "item_knn", "bpr_mf")
DATASET = "hm-synthetic"


def spec_for(scale: float):
    from mmrec_pipeline.registry import DatasetSpec, get_dataset

    return DatasetSpec(**{**get_dataset(DATASET).__dict__, "options": {"scale": scale, "seed": 0}})


def folder(scale: float) -> Path:
    from mmrec_pipeline.storage import Lake

    return Lake().dataset("scale-benchmark") / f"scale{scale:g}"


def load_data(scale: float):
    import polars as pl

    from mmrec_pipeline.data.dataset import RecDataset

    spec, out = spec_for(scale), folder(scale)
    # Only the columns these models read: H&M has no ratings or reviews, and those all-null columns (plus the
    # constant `event`) would add ~1.7 GB at scale 1.0 for nothing.
    split = pl.read_parquet(out / "split.parquet", columns=["user_id", "item_id", "ts", "split"])
    return RecDataset.from_tables(spec.name, split, pl.read_parquet(out / "items.parquet"), spec.split,
                                  spec.repeats_relevant)


def run_stage(stage: str, scale: float, args) -> dict:
    """One stage, in this (child) process; returns facts about what it produced."""
    import polars as pl

    from mmrec_pipeline.storage import write_parquet

    if stage in (*MODELS, "evaluate", "item_knn_top12"):  # importing torch alone costs ~0.7 GB of RSS: only where it is used
        import torch

        torch.set_num_threads(args.threads)

    spec, out = spec_for(scale), folder(scale)
    out.mkdir(parents=True, exist_ok=True)
    if stage == "generate":
        from mmrec_pipeline.data.ingest import generate_source
        from mmrec_pipeline.storage import Lake

        generate_source(spec, Lake())
        return {}
    if stage == "ingest":
        from mmrec_pipeline.data.ingest import load_dataset
        from mmrec_pipeline.storage import Lake

        tables = load_dataset(spec, Lake())
        for name in ("items", "users", "interactions"):
            write_parquet(getattr(tables, name), out / f"{name}.parquet")
        return {"items": tables.items.height, "users": tables.users.height,
                "interactions": tables.interactions.height}
    if stage == "split":
        from mmrec_pipeline.data.splits import (
            check_items_known,
            check_no_leak,
            check_temporal_shares,
            filter_and_split,
            split_summary,
        )

        inter = pl.read_parquet(out / "interactions.parquet")
        split, _ = filter_and_split(inter, spec.split, spec.min_user_interactions)
        del inter
        checks = {name: fn(split)[0] for name, fn in (("shares", check_temporal_shares), ("no_leak", check_no_leak))}
        checks["items_known"] = check_items_known(split, pl.read_parquet(out / "items.parquet"))[0]
        summary = split_summary(split)  # the split asset's metadata
        write_parquet(split, out / "split.parquet")
        return {"rows": split.height, "checks_pass": checks, "test_users": summary["test_users"]}
    if stage in MODELS:
        from mmrec_pipeline.compute import Compute
        from mmrec_pipeline.models import MODELS as REGISTRY
        from mmrec_pipeline.models.base import ItemFeatures

        data = load_data(scale)
        overrides = {"bpr_mf": {"epochs": args.bpr_epochs, "batch_size": args.bpr_batch}}.get(stage, {})
        cls = REGISTRY[stage]
        model = cls(cls.Config(**overrides))
        report = model.fit(data, ItemFeatures(), Compute(device="cpu"))
        model.save(out / "models" / stage)
        return {"fit_seconds": round(report["seconds"], 1), "train_seconds": round(report.get("train_seconds", 0), 1),
                "train_rows": data.train.height,
                "users": data.n_users, "items": data.n_items}
    if stage == "evaluate":
        from mmrec_pipeline.evaluation.protocols import evaluate_model
        from mmrec_pipeline.models import MODELS as REGISTRY

        data = load_data(scale)
        facts = {}
        for name in MODELS:
            model = REGISTRY[name].load(out / "models" / name)
            t0 = time.perf_counter()
            table, full = evaluate_model(model, data, name, max_users=args.eval_users)
            main = table.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10)).row(0, named=True)
            facts[name] = {"protocol": main["protocol"], "users_evaluated": full.n_users,
                           "ndcg@10": round(main["value"], 4), "seconds": round(time.perf_counter() - t0, 1)}
        return facts
    if stage == "item_knn_top12":
        import hashlib

        from mmrec_pipeline.models import MODELS as REGISTRY
        from mmrec_pipeline.serving import active_users, write_top_k

        data = load_data(scale)
        model = REGISTRY["item_knn"].load(out / "models" / "item_knn")
        users = active_users(data, 0)[: args.top12_users or None]
        path = out / "item_knn_top12.parquet"
        facts = write_top_k(model, data, users, path, k=12, batch_users=1024)
        # A fingerprint of the lists (not the float scores): equal before and after a change of the score path
        # means every user got the same 12 items in the same order.
        lists = pl.read_parquet(path, columns=["user_id", "rank", "item_id"]).sort("user_id", "rank")
        digest = hashlib.sha256(lists.write_csv().encode()).hexdigest()[:16]
        return {"users": facts["users"], "seconds": round(facts["seconds"], 1),
                "users_per_second": round(facts["users_per_second"], 1), "lists_sha256": digest}
    raise ValueError(f"unknown stage {stage}")


def child(stage: str, scale: float, args) -> dict:
    """Run one stage in a fresh process; wall time, its own peak RSS and CPU time, and what it reported."""
    cmd = [sys.executable, __file__, "--stage", stage, "--scales", str(scale), "--threads", str(args.threads),
           "--bpr-epochs", str(args.bpr_epochs), "--bpr-batch", str(args.bpr_batch),
           "--eval-users", str(args.eval_users), "--top12-users", str(args.top12_users)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True, env=env)
        timer = threading.Timer(args.stage_timeout, proc.kill)
        timer.start()
        # wait4, not proc.wait: it returns this child's own rusage (ru_maxrss = its peak RSS in KiB).
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    row = {"stage": stage, "scale": scale, "wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    if wall >= args.stage_timeout and proc.returncode != 0:
        row["error"] = f"did not finish within {args.stage_timeout} s"
    elif proc.returncode != 0:
        row["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
        row["stderr_tail"] = stderr[-2000:]
    else:
        row["facts"] = json.loads(stdout.strip().splitlines()[-1])
    return row


def save(rows: list[dict], info: dict, args) -> None:
    """Merge this run's rows into the results file, replacing the same (scale, stage) and keeping the others, each
    with the machine it ran on (re-read each time: runs at other scales may write it too)."""
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = previous.get("runs", {})
    for row in rows:
        row.setdefault("machine", info)
        row.setdefault("args", {k: v for k, v in vars(args).items() if k not in ("stage", "markdown")})
        run = runs.setdefault(str(row["scale"]), {"rows": []})
        run["rows"] = [r for r in run["rows"] if r["stage"] != row["stage"]] + [row]
        run["rows"].sort(key=lambda r: STAGES.index(r["stage"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": dict(sorted(runs.items(), key=lambda kv: float(kv[0])))}, indent=2))


def fact(name: str, value) -> str:
    if isinstance(value, dict) and "ndcg@10" in value:  # an evaluated model
        return (f"{name} NDCG@10 {value['ndcg@10']} ({value['protocol']}, {value['users_evaluated']:,} users, "
                f"{value['seconds']} s)")
    if name == "checks_pass":
        return "split checks pass" if all(value.values()) else f"split checks FAIL {value}"
    return f"{name} {value:,}" if isinstance(value, int) else f"{name} {value}"


def markdown(doc: dict) -> str:
    """The docs/BENCHMARKS.md table: one row per scale and stage, with its machine and the load when it started."""
    lines = ["| scale | stage | wall s | CPU s | peak RSS GB | what | machine, load at start |", "|---|---|---|---|---|---|---|"]
    for scale, run in doc["runs"].items():
        for r in run["rows"]:
            m = r.get("machine", {})
            what = r.get("error") or ", ".join(fact(k, v) for k, v in r.get("facts", {}).items())
            emulated = " (AVX2 emulation)" if m.get("cpu_env", {}).get("ATEN_CPU_CAPABILITY") else ""
            lines.append(f"| {scale} | {r['stage']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_gb']} | {what} | "
                         f"{m.get('cpu', '?').replace('(R)', '')}{emulated}, {r.get('load_1m_at_start', '?')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--lake", default=None, help="lake root (default $MMREC_HOME)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bpr-epochs", type=int, default=1)
    parser.add_argument("--bpr-batch", type=int, default=16384)
    parser.add_argument("--eval-users", type=int, default=50_000,
                        help="rank a seeded sample of this many test users where there are more (protocol +users:N)")
    parser.add_argument("--top12-users", type=int, default=0,
                        help="item_knn_top12: score the first N active users (0 = all of them)")
    parser.add_argument("--stage-timeout", type=float, default=3600)
    parser.add_argument("--markdown", action="store_true", help="print the docs/BENCHMARKS.md table from the results and exit")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    if args.lake:
        os.environ["MMREC_HOME"] = str(Path(args.lake).resolve())
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.scales[0], args), default=str))
        return

    # machine_info imports torch (~0.7 GB): in a child, because Linux reports a forked child's peak RSS as at least
    # its parent's at the fork, so this process must stay small for the children's ru_maxrss to be their own.
    probe = "import json; from machine import machine_info; print(json.dumps(machine_info()))"
    machine = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parent, check=True,
                                        capture_output=True, text=True).stdout)
    rows = []
    info = {**machine, "torch_threads": args.threads}
    for scale in args.scales:
        for stage in args.stages:
            load = round(os.getloadavg()[0], 2)  # other jobs on the machine stretch wall time, not CPU time
            row = {**child(stage, scale, args), "load_1m_at_start": load}
            rows.append(row)
            save(rows, info, args)
            print(f"scale {scale:<5g} {stage:<11} wall {row['wall_s']:>8.1f} s  cpu {row['cpu_s']:>8.1f} s  "
                  f"peak RSS {row['peak_rss_gb']:>6.2f} GB  {row.get('error') or json.dumps(row['facts'])}",
                  flush=True)
            if "error" in row:
                break


if __name__ == "__main__":
    main()
