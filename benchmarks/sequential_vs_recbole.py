"""Our SASRec against RecBole 1.2.1's SASRec on ml-100k, leave-one-out, full-catalog ranking.

    python benchmarks/sequential_vs_recbole.py [--epochs 3] [--seeds 3] [--threads 1] [--reuse-recbole]

Both models see the same split: ours is made by `make_split(..., "loo")` and written to RecBole atomic files
with each user's interactions numbered 0, 1, 2, … in our order as the timestamp, so RecBole's
`LS: valid_and_test` split (sort by time; last -> test, second last -> valid) reproduces it exactly.
Same model: hidden 64, 2 layers, 2 heads, inner 256, max length 50, dropout 0.5, Adam at 2e-3 for both
(RecBole's SASRec defaults except the learning rate, raised from 1e-3 so a few epochs mean something),
softmax cross-entropy over the whole catalog (`loss_type: CE`). What differs is the point of the comparison:
RecBole makes every prefix of every sequence a separate sample (one target per 50-item forward pass), ours
puts a target at every position of half-overlapping windows (each transition once per epoch, as in RecBole);
RecBole also drops attention probabilities, ours does not (see mmrec_pipeline/models/sequential.py).

Runs, each in a fresh subprocess so peak RSS is its own: ours for exactly `--epochs` epochs (no early
stopping) with `--seeds` seeds; RecBole for `--epochs` epochs once (its own trainer, validation only after
the last epoch; about 10 minutes an epoch on 2 shared cores, so `--reuse-recbole` takes its run from the
previous results file when the setup is unchanged); ours to convergence (early stopping on validation
NDCG@10). Test NDCG@10 / HR@10 under two protocols: RecBole's (history items are not masked for sequential
models) and this project's (history masked; for RecBole computed here from its `full_sort_predict` scores).
Results: a table and `benchmarks/results/sequential_vs_recbole.json` (with load averages: other jobs on the
machine slow both sides, and 1 torch thread each is the fairer setting then).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "sequential"
RESULTS = ROOT / "benchmarks" / "results" / "sequential_vs_recbole.json"
RECBOLE_PYTHON = ROOT / "benchmarks" / ".recbole-venv" / "bin" / "python"
DATASET = "ml100k_loo"
ARCH = {"hidden_size": 64, "n_layers": 2, "n_heads": 2, "inner_size": 256, "max_len": 50}
DROPOUT, LR = 0.5, 2e-3
OUR_BATCH = 32  # windows per step (~1,300 targets); RecBole: 2048 prefixes per step (2048 targets)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def ndcg_hr(ranks: np.ndarray, k: int = 10) -> dict:
    """Leave-one-out metrics from the 0-based rank of each user's single test item."""
    hit = ranks < k
    return {"ndcg@10": float(np.where(hit, 1 / np.log2(ranks + 2), 0).mean()), "hr@10": float(hit.mean())}


# --- data ----------------------------------------------------------------------------------------


def prepare() -> dict:
    """Our loo split of ml-100k as parquet (for ours) and as RecBole atomic files (for RecBole)."""
    sys.path.insert(0, str(ROOT))
    from mmrec_pipeline.data import schema
    from mmrec_pipeline.data.filtering import user_core
    from mmrec_pipeline.data.sources.recbole import read
    from mmrec_pipeline.data.splits import make_split

    source = Path(os.environ.get("MMREC_DATA", ROOT.parent / "shared" / "data")) / "ml-100k"
    tables = schema.validate(read(source, {}), "ml-100k")
    split = make_split(user_core(tables.interactions, 5), "loo")
    WORK.mkdir(parents=True, exist_ok=True)
    split.write_parquet(WORK / "split.parquet")
    tables.items.write_parquet(WORK / "items.parquet")
    # Same row order as RecDataset (user, time, file order); the per-user position is RecBole's timestamp.
    import polars as pl

    order = (split.with_row_index("_row").sort(["user_id", "ts", "_row"])
             .with_columns(pl.int_range(pl.len()).over("user_id").alias("pos")))
    folder = WORK / DATASET
    folder.mkdir(exist_ok=True)
    with open(folder / f"{DATASET}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{p}\n" for u, i, p in order.select("user_id", "item_id", "pos").iter_rows())
    counts = dict(split.group_by("split").len().iter_rows())
    return {"source": str(source), "users": split["user_id"].n_unique(), "items": tables.items.height,
            "interactions": split.height, "rows_per_split": counts, "protocol": "loo, full-catalog ranking"}


# --- workers (each runs in its own process) ------------------------------------------------------


def worker_ours(epochs: int, converge: bool, seed: int) -> dict:
    import logging

    import polars as pl
    import torch

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.evaluation.metrics import evaluate
    from mmrec_pipeline.models.sasrec import SASRec

    data = RecDataset.from_tables("ml-100k", pl.read_parquet(WORK / "split.parquet"),
                                  pl.read_parquet(WORK / "items.parquet"), protocol="loo")
    config = SASRec.Config(**ARCH, dropout=DROPOUT, lr=LR, batch_size=OUR_BATCH, epochs=epochs, seed=seed,
                           patience=5 if converge else epochs + 1, eval_every=1 if converge else epochs)
    model = SASRec(config)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    base = max_rss_mb()
    report = model.fit(data, None, Compute(device="cpu"), logging.getLogger("ours"))
    out = {"rss_before_training_mb": base, "torch_threads": torch.get_num_threads(),
           "seconds_total": report["seconds"], "epochs": report["epochs"], "best_epoch": report["best_epoch"],
           "train_seconds_per_epoch": float(np.mean([r["train_seconds"] for r in report["curve"]])),
           "valid_ndcg@10": report["best_valid_ndcg@10"], "config": config.__dict__}
    inputs = data.eval_inputs("test")
    for masked in (False, True):
        inputs.exclude_history = masked
        res = evaluate(model.score, inputs, ks=(10,))
        key = "project_protocol" if masked else "recbole_protocol"
        out[key] = {"ndcg@10": res.value("ndcg", 10), "hr@10": res.value("hr", 10), "users": res.n_users}
    return out


def worker_recbole(epochs: int) -> dict:
    import torch

    np.float, np.bool = float, bool  # RecBole 1.2.1's metrics use aliases numpy 1.24+ removed
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    tmp = tempfile.mkdtemp(prefix="recbole-")
    os.chdir(tmp)  # RecBole writes log/ and saved/ under the working directory
    config = Config(model="SASRec", dataset=DATASET, config_dict={
        "data_path": str(WORK), "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": ARCH["max_len"], "hidden_size": ARCH["hidden_size"], "n_layers": ARCH["n_layers"],
        "n_heads": ARCH["n_heads"], "inner_size": ARCH["inner_size"], "hidden_dropout_prob": DROPOUT,
        "attn_dropout_prob": DROPOUT, "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": LR, "train_batch_size": 2048, "epochs": epochs, "eval_step": epochs, "stopping_step": 10,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "use_gpu": False,
        "show_progress": False, "checkpoint_dir": tmp, "state": "WARNING", "seed": 2020, "reproducibility": True})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = SASRec(config, train.dataset).to(config["device"])
    trainer = Trainer(config, model)
    epoch_seconds = []
    train_epoch = trainer._train_epoch

    def timed_epoch(*args, **kwargs):  # training time only, as for ours (validation is timed apart)
        start = time.perf_counter()
        result = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        return result

    trainer._train_epoch = timed_epoch
    base = max_rss_mb()
    start = time.perf_counter()
    trainer.fit(train, valid, saved=False, show_progress=False)
    seconds = time.perf_counter() - start
    official = trainer.evaluate(test, load_best_model=False, show_progress=False)

    # The project's protocol on the same model: mask the user's other items (ml-100k has no repeats), rank the
    # test item among the rest.
    uid, iid = dataset.uid_field, dataset.iid_field
    items_of: dict[int, list[int]] = {}
    for u, i in zip(dataset.inter_feat[uid].tolist(), dataset.inter_feat[iid].tolist()):
        items_of.setdefault(u, []).append(i)
    ranks = []
    model.eval()
    with torch.no_grad():
        for interaction, _, _, positive_i in test:
            scores = model.full_sort_predict(interaction).view(len(positive_i), -1)
            target = scores[torch.arange(len(positive_i)), positive_i].clone()
            scores[:, 0] = -torch.inf  # RecBole's padding item
            for row, u in enumerate(interaction[uid].tolist()):
                scores[row, items_of[u]] = -torch.inf  # the target too: it is compared through `target`
            ranks.append((scores > target[:, None]).sum(1).numpy())
    import recbole

    return {"rss_before_training_mb": base, "torch_threads": torch.get_num_threads(), "seconds_total": seconds,
            "epochs": len(epoch_seconds), "train_seconds_per_epoch": float(np.mean(epoch_seconds)),
            "epoch_seconds": epoch_seconds,
            "recbole_protocol": {"ndcg@10": float(official["ndcg@10"]), "hr@10": float(official["hit@10"])},
            "project_protocol": ndcg_hr(np.concatenate(ranks)),
            "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__}}


# --- driver --------------------------------------------------------------------------------------


def run_worker(python: Path | str, args: list[str], timeout: float) -> dict:
    cmd = [str(python), __file__, *args]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(name: str, res: dict) -> dict:
    if "error" in res:
        return {"run": name, **res}
    return {"run": name, "epochs": res["epochs"], "best_epoch": res.get("best_epoch"),
            "train_s_per_epoch": round(res["train_seconds_per_epoch"], 2), "total_s": round(res["seconds_total"], 1),
            "peak_rss_mb": round(res["peak_rss_mb"], 0),
            **{f"{k} ({p.split('_')[0]})": round(res[p][k], 4) for p in ("recbole_protocol", "project_protocol")
               for k in ("ndcg@10", "hr@10")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs for RecBole and for ours at equal epochs")
    parser.add_argument("--max-epochs", type=int, default=60, help="ours to convergence: upper bound")
    parser.add_argument("--skip-recbole", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in both workers (0 = torch's default, one per core); 1 is the fairer "
                             "choice when other jobs share the cores, since oversubscribed threads stall")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of ours at equal epochs (RecBole runs once)")
    parser.add_argument("--reuse-recbole", action="store_true",
                        help="take RecBole's run from the existing results file when its setup matches")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        sys.path.insert(0, str(ROOT))
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        out = {"ours_fixed": lambda: worker_ours(args.epochs, converge=False, seed=args.seed),
               "ours_converged": lambda: worker_ours(args.max_epochs, converge=True, seed=args.seed),
               "recbole": lambda: worker_recbole(args.epochs)}[args.worker]()
        out["peak_rss_mb"] = max_rss_mb()
        print(json.dumps(out))
        return

    start = time.perf_counter()
    machine = machine_info()
    data = prepare()
    setup = {**ARCH, "dropout": DROPOUT, "lr": LR, "loss": "softmax CE over the whole catalog",
             "epochs_compared": args.epochs, "torch_threads": args.threads or "default",
             "ours_batch_windows": OUR_BATCH, "recbole_batch": 2048}
    ep = ["--epochs", str(args.epochs), "--max-epochs", str(args.max_epochs), "--threads", str(args.threads)]
    raw = {f"ours_fixed_seed{seed}": run_worker(sys.executable, ["--worker", "ours_fixed", "--seed", str(seed), *ep],
                                                1800) for seed in range(args.seeds)}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.reuse_recbole and previous.get("setup") == setup and "error" not in previous["raw"]["recbole"]:
        raw["recbole"] = {**previous["raw"]["recbole"], "reused_from": previous["machine"]}
    elif args.skip_recbole:
        raw["recbole"] = {"error": "skipped (--skip-recbole)"}
    elif not RECBOLE_PYTHON.exists():
        raw["recbole"] = {"error": f"{RECBOLE_PYTHON} missing; see ../shared/ENVIRONMENT.md for how to create it"}
    else:
        raw["recbole"] = run_worker(RECBOLE_PYTHON, ["--worker", "recbole", *ep], 3600)
    raw["ours_converged"] = run_worker(sys.executable, ["--worker", "ours_converged", *ep], 1800)

    fixed = [raw[f"ours_fixed_seed{seed}"] for seed in range(args.seeds)]
    table = [row(f"ours, {args.epochs} epochs, seed {seed}", res) for seed, res in enumerate(fixed)]
    ok = [res for res in fixed if "error" not in res]
    if ok:  # the mean over seeds, as one more row
        mean = {k: float(np.mean([res[k] for res in ok])) for k in ("train_seconds_per_epoch", "seconds_total",
                                                                     "peak_rss_mb")}
        for p in ("recbole_protocol", "project_protocol"):
            mean[p] = {k: float(np.mean([res[p][k] for res in ok])) for k in ("ndcg@10", "hr@10")}
        table.append(row(f"ours, {args.epochs} epochs, mean of {len(ok)} seeds", {**mean, "epochs": args.epochs}))
    table += [row(f"RecBole 1.2.1, {args.epochs} epochs", raw["recbole"]),
              row("ours, early-stopped (seed 0)", raw["ours_converged"])]
    goals = None
    if "error" not in raw["recbole"] and ok:
        r = raw["recbole"]
        goals = {"ndcg_ours_over_recbole_same_epochs": mean["recbole_protocol"]["ndcg@10"]
                 / r["recbole_protocol"]["ndcg@10"],
                 "ndcg_ours_over_recbole_same_epochs_project_protocol": mean["project_protocol"]["ndcg@10"]
                 / r["project_protocol"]["ndcg@10"],
                 "epoch_time_ours_over_recbole": mean["train_seconds_per_epoch"] / r["train_seconds_per_epoch"]}
        if "error" not in raw["ours_converged"]:
            goals["ndcg_ours_early_stopped_over_recbole"] = (raw["ours_converged"]["recbole_protocol"]["ndcg@10"]
                                                             / r["recbole_protocol"]["ndcg@10"])
            goals["wall_ours_early_stopped_over_recbole"] = (raw["ours_converged"]["seconds_total"]
                                                             / r["seconds_total"])
        goals["met"] = (goals["ndcg_ours_over_recbole_same_epochs"] >= 1
                        and goals["epoch_time_ours_over_recbole"] <= 0.5)
    machine["load_average_1m_5m_15m_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"benchmark": "sequential_vs_recbole", "machine": machine, "data": data, "setup": setup,
              "results": table, "goals": goals, "raw": raw, "wall_seconds": round(time.perf_counter() - start, 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))

    cols = ["run", "epochs", "train_s_per_epoch", "peak_rss_mb", "ndcg@10 (recbole)", "hr@10 (recbole)",
            "ndcg@10 (project)", "hr@10 (project)"]
    print(f"ml-100k loo, {data['users']} users x {data['items']} items; {machine['cores_usable']} cores")
    print(" | ".join(cols))
    for r in table:
        print(" | ".join(str(r.get(c, r.get("error", ""))) for c in cols))
    if goals:
        print(f"ours (mean of seeds) / RecBole NDCG@10 at {args.epochs} epochs: "
              f"{goals['ndcg_ours_over_recbole_same_epochs']:.2f}x; epoch time: "
              f"{goals['epoch_time_ours_over_recbole']:.3f}x; goals met: {goals['met']}")
    print(f"saved {RESULTS.relative_to(ROOT)} in {report['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
