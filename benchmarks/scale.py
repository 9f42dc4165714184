"""Cost curve of the pipeline on H&M-shaped data (`hm-synthetic`) at growing scale: wall time and peak RSS per stage.

    python benchmarks/scale.py [--scales 0.01 0.1 1.0] [--lake /tmp/scale-lake] [--threads 2]

Stages, each in its own child process (so its peak RSS is its own: `os.wait4`'s ru_maxrss), reading what the
previous stage wrote to the lake: generate (the Kaggle files) -> ingest (the real hm reader + validation ->
items/users/interactions parquet) -> split (5-core on users, temporal split, the three split checks) ->
popularity, item_knn, bpr_mf (fit on train, checkpoint) -> evaluate (the three checkpoints, full-catalog ranking,
batched, through evaluate_model at cut-offs 10 and 12 (NDCG@12, MAP@12): plain, +cold and +sampled:100; where there
are more than `--eval-users` test users a seeded sample of that many is ranked, and the protocol says so:
`temporal+users:50000`; `--eval-users 0` ranks every test user, protocol plain `temporal`, without +sampled:100).
item_knn_top12 (after item_knn): every active user's top-12 through serving.write_top_k in batches of 1024, its
users/s and a fingerprint of the lists (so a faster score path can be shown to give the same lists).
BPR-MF runs `--bpr-epochs` epoch(s) with `--bpr-batch` triples per step (no early stopping at 1 epoch).
sasrec, gru4rec: the registry's model through its own fit with sampled softmax (`--seq-negatives`), `--seq-users-per-epoch`
users' windows per epoch and a `--seq-seconds` training budget; validation NDCG@12 (`valid_k: 12`, what early
stopping keeps) after each epoch on `--seq-valid-users` seeded valid users, and the three model stages' checkpoints
on the same users.
mmrec_run: the nightly job itself, `mmrec run` on benchmarks/hm_full.yaml's entry at the scale (the champion among
popularity, item-kNN, BPR-MF and SASRec, retrained on every interaction, top-12 for every active user, its DuckDB
view), in an instance of its own (set `MMREC_CONCURRENT_STEPS=1` at 1.0: two model steps side by side do not fit
in 24 GB); its steps run in processes of their own, so the row's CPU and peak RSS columns
stay empty and the serving step's own peak RSS (its asset metadata) is in the facts. The stage records one run; the
1.0 row in scale.json joins three runs' records (docs/BENCHMARKS.md, "`mmrec run` at full size").
A stage that fails or runs past `--stage-timeout` is recorded with its error; later stages of that scale are
skipped. Results: a printed table and `benchmarks/results/scale.json` (CPU model/flags, load at start); `--markdown`
also shows benchmarks/results/nightly.json's phases (benchmarks/nightly.py) as rows.
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
NIGHTLY = ROOT / "benchmarks" / "results" / "nightly.json"  # benchmarks/nightly.py's rows, shown in the same table
STAGES = ("generate", "ingest", "split", "popularity", "item_knn", "bpr_mf", "evaluate", "item_knn_top12", "sasrec",
          "gru4rec", "evaluate_sequential", "mmrec_run")
SEQUENTIAL = ("sasrec", "gru4rec")
MODELS = ("popularity", "item_knn", "bpr_mf")
DATASET = "hm-synthetic"
# `mmrec run` on the nightly job's own registry (benchmarks/hm_full.yaml) and asset selection
FULL_REGISTRY, FULL_SELECT = ROOT / "benchmarks" / "hm_full.yaml", ROOT / "benchmarks" / "hm_full.select"
FULL_DATASET = "hm-synthetic-full"


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

    if stage in (*MODELS, *SEQUENTIAL, "evaluate", "evaluate_sequential", "item_knn_top12"):  # importing torch alone costs ~0.7 GB of RSS: only where it is used
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
    if stage in ("evaluate", "evaluate_sequential"):  # the latter: the sasrec/gru4rec checkpoints, the same way
        import resource

        from mmrec_pipeline.evaluation.protocols import evaluate_model
        from mmrec_pipeline.models import MODELS as REGISTRY

        data = load_data(scale)
        facts = {}
        names = MODELS if stage == "evaluate" else [n for n in SEQUENTIAL if (out / "models" / n).exists()]
        for name in names:
            model = REGISTRY[name].load(out / "models" / name)
            t0 = time.perf_counter()
            # 12: H&M's cut-off (Kaggle's MAP@12); the sampled protocol is left out when every user is ranked
            table, full = evaluate_model(model, data, name, max_users=args.eval_users or None, ks=(10, 12),
                                         sampled=None if not args.eval_users else 100)
            protocol = table["protocol"][0]  # the full ranking's rows come first (plain or +users:N)
            main = {(r["metric"], r["k"]): r for r in table.filter(pl.col("protocol") == protocol).iter_rows(named=True)}
            facts[name] = {"protocol": main["ndcg", 10]["protocol"], "users_evaluated": full.n_users,
                           "ndcg@10": round(main["ndcg", 10]["value"], 4),
                           "ndcg@12": round(main["ndcg", 12]["value"], 4),
                           "map@12": round(main["map", 12]["value"], 4),
                           "recall@12": round(main["recall", 12]["value"], 4),
                           "seconds": round(time.perf_counter() - t0, 1),
                           "ranking_seconds": round(full.seconds, 1),
                           # ru_maxrss of this process so far: the data and every model evaluated up to this one
                           "peak_rss_gb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
            del model
        return facts
    if stage in SEQUENTIAL:
        from mmrec_pipeline.compute import Compute
        from mmrec_pipeline.models import MODELS as REGISTRY
        from mmrec_pipeline.models import training
        from mmrec_pipeline.models.base import ItemFeatures

        data = load_data(scale)
        # early stopping and the curve on NDCG@12 (H&M's cut-off) over `--seq-valid-users` seeded valid users
        config = {"max_len": args.seq_max_len, "hidden_size": args.seq_hidden, "loss": "ce",
                  "negatives": args.seq_negatives, "batch_size": args.seq_batch, "epochs": 1000, "patience": 1000,
                  "max_train_seconds": args.seq_seconds, "users_per_epoch": args.seq_users_per_epoch,
                  "valid_users": args.seq_valid_users, "valid_k": 12}
        cls = REGISTRY[stage]
        model = cls(cls.Config(**config))
        report = model.fit(data, ItemFeatures(), Compute(device="cpu"))
        model.save(out / "models" / stage)
        # the models of the earlier stages on the same validation users, for the curve to be read against
        validator, beside = training.Validator(data, k=12, max_users=args.seq_valid_users, model=model), {}
        for name in MODELS:
            if (out / "models" / name).exists():
                other = REGISTRY[name].load(out / "models" / name)
                other.at_stage(data, "valid")
                beside[name] = {"valid_ndcg@12": round(validator(other.score), 4)}
        sequences = [s for s in data.sequences("train") if len(s) >= 2]
        targets = sum(len(s) - 1 for s in sequences)  # what an epoch over every user trains
        rate = report["targets_per_second"]
        curve = [{"epoch": r["epoch"], "loss": round(r["loss"], 4), "train_seconds": round(r["train_seconds"], 1),
                  "valid_ndcg@12": round(r["valid_ndcg@12"], 4)} for r in report["curve"]]
        return {"config": config, "users_with_target": len(sequences), "full_epoch_targets": targets,
                "targets_per_second": round(rate, 1), "train_seconds": round(report["train_seconds"], 1),
                "fit_seconds": round(report["seconds"], 1), "epochs": report["epochs"],
                "best_epoch": report["best_epoch"], "stopped_by": report["stopped_by"],
                # an extrapolation from this run's training rate, not a measured epoch
                "full_epoch_seconds_extrapolated": round(targets / max(rate, 1e-9), 1),
                "valid_protocol": f"{data.protocol}@valid+users:{args.seq_valid_users}", "curve": curve,
                "beside": beside}
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
    if stage == "mmrec_run":
        return mmrec_run(scale)
    raise ValueError(f"unknown stage {stage}")


def mmrec_run(scale: float) -> dict:
    """`mmrec run` of benchmarks/hm_full.yaml's entry at `scale` (a copy of the file with that scale) and
    benchmarks/hm_full.select's assets, with a Dagster instance of its own in the lake: the whole run's wall time,
    each step's (from the instance), the champion ranking, the serving step's facts (its materialization's
    metadata) and a count through the DuckDB view."""
    import yaml

    from mmrec_pipeline.storage import Lake

    lake = Lake()
    raw = yaml.safe_load(FULL_REGISTRY.read_text())
    raw["datasets"][FULL_DATASET]["options"]["scale"] = scale
    registry = lake.root / f"hm_full-{scale:g}.yaml"
    registry.write_text(yaml.safe_dump(raw, sort_keys=False))
    os.environ.update(MMREC_DATASETS=str(registry), DAGSTER_HOME=str(lake.root / f"dagster-mmrec-run-{scale:g}"))
    cmd = [sys.executable, "-m", "resources.cli", "run", "--dataset", FULL_DATASET,
           "--select", FULL_SELECT.read_text().strip()]
    log = lake.root / f"mmrec_run-{scale:g}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, check=False, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    text = log.read_text()
    if code != 0:
        raise RuntimeError(f"mmrec run exited {code}; its output: {log}\n{text[-3000:]}")
    return {"run_wall_s": round(wall, 1), **run_summary(lake, text), "log": str(log)}


def run_summary(lake, output: str) -> dict:
    """What `mmrec run` of FULL_DATASET wrote, from its output (the run id), the instance and the lake."""
    import re

    import dagster as dg
    import duckdb
    import polars as pl

    from resources.runner import step_timings

    instance = dg.DagsterInstance.get()
    run_id = re.search(r"run id ([0-9a-f-]{36})", output).group(1)
    steps = {s.step: round(s.wall_seconds, 1) for s in step_timings(instance, run_id) if s.wall_seconds >= 1}
    record = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("recommendations"), asset_partitions=[FULL_DATASET]), limit=1).records[0]
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    serving = {k: meta[k] for k in ("champion", "active_users", "rows", "retrain_seconds", "scoring_seconds",
                                    "users_per_second", "peak_rss_gb", "k")}
    peaks = {}  # each model step's peak RSS, from its materialization's metadata
    for model in ("popularity", "item_knn", "bpr_mf", "sasrec"):
        found = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(model), asset_partitions=[FULL_DATASET]), limit=1).records
        if found and "peak_rss_gb" in found[0].asset_materialization.metadata:
            peaks[model] = found[0].asset_materialization.metadata["peak_rss_gb"].value
    champion = pl.read_parquet(lake.table(FULL_DATASET, "champion"))
    ranking = [{"model": f"{r['model']}/{r['variant']}", "valid_ndcg@10": round(r["valid"], 4),
                "test_ndcg@10": round(r["test"], 4) if r["test"] is not None else None}
               for r in champion.iter_rows(named=True)]
    with duckdb.connect(str(lake.catalog), read_only=True) as db:
        (users, rows), = db.sql(f'select count(distinct user_id), count(*) from "{FULL_DATASET}".recommendations_readable'
                                ).fetchall()
    return {"serving": serving, "ranking": ranking, "duckdb_view": {"users": users, "rows": rows},
            "steps_wall_s": steps, "model_steps_peak_rss_gb": peaks}


def child(stage: str, scale: float, args) -> dict:
    """Run one stage in a fresh process; wall time, its own peak RSS and CPU time, and what it reported."""
    cmd = [sys.executable, __file__, "--stage", stage, "--scales", str(scale), "--threads", str(args.threads),
           "--bpr-epochs", str(args.bpr_epochs), "--bpr-batch", str(args.bpr_batch),
           "--eval-users", str(args.eval_users), "--top12-users", str(args.top12_users),
           "--seq-users-per-epoch", str(args.seq_users_per_epoch), "--seq-seconds", str(args.seq_seconds),
           "--seq-negatives", str(args.seq_negatives), "--seq-batch", str(args.seq_batch),
           "--seq-max-len", str(args.seq_max_len), "--seq-hidden", str(args.seq_hidden),
           "--seq-valid-users", str(args.seq_valid_users)]
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
    results = Path(args.results)
    previous = json.loads(results.read_text()) if results.exists() else {}
    runs = previous.get("runs", {})
    for row in rows:
        row.setdefault("machine", info)
        row.setdefault("args", {k: v for k, v in vars(args).items() if k not in ("stage", "markdown")})
        run = runs.setdefault(str(row["scale"]), {"rows": []})
        run["rows"] = [r for r in run["rows"] if r["stage"] != row["stage"]] + [row]
        run["rows"].sort(key=lambda r: STAGES.index(r["stage"]))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"runs": dict(sorted(runs.items(), key=lambda kv: float(kv[0])))}, indent=2))


def fact(name: str, value) -> str:
    if isinstance(value, dict) and "ndcg@10" in value:  # an evaluated model
        at_12 = (f", NDCG@12 {value['ndcg@12']}, MAP@12 {value['map@12']}" if "map@12" in value else "")
        return (f"{name} NDCG@10 {value['ndcg@10']}{at_12} ({value['protocol']}, {value['users_evaluated']:,} users, "
                f"{value['seconds']} s)")
    if name == "checks_pass":
        return "split checks pass" if all(value.values()) else f"split checks FAIL {value}"
    return f"{name} {value:,}" if isinstance(value, int) else f"{name} {value}"


def sequential_facts(f: dict) -> str:
    """A sasrec/gru4rec row: its configuration, rate, the extrapolated full epoch and the validation curve."""
    c = f["config"]
    users = f"{c['users_per_epoch']:,} sampled users per epoch" if c["users_per_epoch"] else "every user each epoch"
    curve = ", ".join(f"{r['valid_ndcg@12']}" for r in f["curve"])
    return (f"hidden {c['hidden_size']}, max_len {c['max_len']}, sampled softmax over {c['negatives']} negatives "
            f"(shared by the batch), batch {c['batch_size']}, {users}, training budget {c['max_train_seconds']:g} s: "
            f"{f['epochs']} epochs in {f['train_seconds']} s, {f['targets_per_second']:,} targets/s; an epoch over all "
            f"{f['users_with_target']:,} users ({f['full_epoch_targets']:,} targets) ≈ "
            f"{f['full_epoch_seconds_extrapolated']:,} s (an extrapolation from that rate); valid NDCG@12 by epoch "
            f"{curve} ({f['valid_protocol']})"
            + "".join(f"; {name} {v['valid_ndcg@12']}" for name, v in f.get("beside", {}).items()))


def mmrec_run_facts(f: dict) -> str:
    """An mmrec_run row: the champion, the serving step, the validation ranking and the slowest steps."""
    s = f["serving"]
    ranking = ", ".join(f"{r['model']} {r['valid_ndcg@10']}" for r in f["ranking"])
    steps = ", ".join(f"{k} {v:,.0f} s" for k, v in sorted(f["steps_wall_s"].items(), key=lambda kv: -kv[1])[:6])
    return (f"`mmrec run` (benchmarks/hm_full.yaml): champion {s['champion']}, retrained in {s['retrain_seconds']:,.0f} s, "
            f"top-{s['k']} for {s['active_users']:,} active users in {s['scoring_seconds']:,.0f} s "
            f"({s['users_per_second']:,.0f} users/s), serving step peak RSS {s['peak_rss_gb']} GB; DuckDB view "
            f"{f['duckdb_view']['users']:,} users, {f['duckdb_view']['rows']:,} rows; valid NDCG@10 (temporal@valid) "
            f"{ranking}; slowest steps: {steps}"
            + (f"; {len(f['parts'])} runs, steps killed by the OOM killer: {f['oom_killed']}" if f.get("parts") else ""))


def nightly_rows(path: Path) -> list[str]:
    """benchmarks/nightly.py's phases (full build, one more day) as rows of the same table."""
    if not path.exists():
        return []
    lines = []
    for scale, run in json.loads(path.read_text())["runs"].items():
        m = run["machine"]
        emulated = " (AVX2 emulation)" if m.get("cpu_env", {}).get("ATEN_CPU_CAPABILITY") else f" ({m['cpu_capability']})"
        for phase, label in (("full_build", "nightly: full build"), ("one_more_day", "nightly: one more day")):
            r = run.get(phase)
            if not r:
                continue
            steps = ", ".join(f"{k} {v} s" for k, v in sorted(r["step_wall_s"].items(), key=lambda kv: -kv[1])[:4])
            what = (f"{len(r['ran'])} assets ran ({run['executor']}); slowest steps: {steps}; "
                    f"text_embeddings computed {r['features']['text_embeddings']['computed']:,}, "
                    f"reused {r['features']['text_embeddings']['reused']:,}")
            lines.append(f"| {scale} | {label} | {r['total_wall_s']} | {r['total_cpu_s']} | – | {what} | "
                         f"{m.get('cpu', '?').replace('(R)', '')}{emulated}, {r['load_1m_at_start']} |")
    return lines


def markdown(doc: dict, nightly: Path | None = None) -> str:
    """The docs/BENCHMARKS.md table: one row per scale and stage, with its machine and the load when it started;
    then the nightly increment's phases (benchmarks/results/nightly.json)."""
    lines = ["| scale | stage | wall s | CPU s | peak RSS GB | what | machine, load at start |", "|---|---|---|---|---|---|---|"]
    for scale, run in doc["runs"].items():
        for r in run["rows"]:
            m = r.get("machine", {})
            if r.get("error"):
                what = r["error"]
            elif r["stage"] in SEQUENTIAL:
                what = sequential_facts(r["facts"])
            elif r["stage"] == "mmrec_run":
                what = mmrec_run_facts(r["facts"])
            else:
                what = ", ".join(fact(k, v) for k, v in r.get("facts", {}).items())
            emulated = " (AVX2 emulation)" if m.get("cpu_env", {}).get("ATEN_CPU_CAPABILITY") else ""
            # `mmrec run`'s steps run in processes its own rusage does not count: the serving step's peak is in `what`
            cpu, peak = ("–", "–") if r["stage"] == "mmrec_run" else (r["cpu_s"], r["peak_rss_gb"])
            lines.append(f"| {scale} | {r['stage']} | {r['wall_s']} | {cpu} | {peak} | {what} | "
                         f"{m.get('cpu', '?').replace('(R)', '')}{emulated}, {r.get('load_1m_at_start', '?')} |")
    return "\n".join(lines + nightly_rows(nightly or NIGHTLY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--lake", default=None, help="lake root (default $MMREC_HOME)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bpr-epochs", type=int, default=1)
    parser.add_argument("--bpr-batch", type=int, default=16384)
    parser.add_argument("--eval-users", type=int, default=50_000,
                        help="rank a seeded sample of this many test users where there are more (protocol +users:N); "
                             "0 = every test user (protocol `temporal`)")
    parser.add_argument("--top12-users", type=int, default=0,
                        help="item_knn_top12: score the first N active users (0 = all of them)")
    parser.add_argument("--seq-users-per-epoch", type=int, default=100_000,
                        help="sasrec/gru4rec: users whose windows one epoch trains (0 = all)")
    parser.add_argument("--seq-seconds", type=float, default=1200, help="sasrec/gru4rec: training time budget")
    parser.add_argument("--seq-negatives", type=int, default=1000, help="sasrec/gru4rec: sampled-softmax negatives")
    parser.add_argument("--seq-batch", type=int, default=256, help="sasrec/gru4rec: windows per step")
    parser.add_argument("--seq-max-len", type=int, default=50)
    parser.add_argument("--seq-hidden", type=int, default=64)
    parser.add_argument("--seq-valid-users", type=int, default=10_000,
                        help="sasrec/gru4rec: seeded sample of valid users validated after each epoch")
    parser.add_argument("--stage-timeout", type=float, default=3600)
    parser.add_argument("--results", default=str(RESULTS),
                        help="the results file to merge rows into (another file for a lake rebuild not to be recorded)")
    parser.add_argument("--markdown", action="store_true", help="print the docs/BENCHMARKS.md table from the results and exit")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.results).read_text())))
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
