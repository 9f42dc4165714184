"""Benchmark the shared ranking evaluator against a naive per-user loop and RecBole's full-sort evaluation.

    python benchmarks/evaluator.py [--users 10000 --items 50000]

Synthetic case: a random low-rank score function (user and item factors, 64 dims), about 20 history
items and about 3 relevant items per user, full-catalog ranking with history excluded, K = 5, 10, 20.
Every method runs in a fresh subprocess so its peak RSS (``resource.getrusage``, which sees torch's
allocations too) is its own. The naive loop runs on a subset of users and is extrapolated linearly.
RecBole runs in its own venv (``benchmarks/.recbole-venv``) with its own Collector/Evaluator code.
Each method is timed ``--repeats`` times (best wall time reported, median kept, and the least process CPU time,
which a shared machine stretches less than wall time) with ``--threads`` torch threads
(default 1: on a shared machine, with 2 threads every small op waits on a busy core and timings swing 5x).
Results: a printed table and ``benchmarks/results/evaluator.json`` (``--results`` elsewhere; ``--methods`` runs fewer
of ours, e.g. only ``score_only ours`` at a size where the naive loop would take long).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
RESULTS = ROOT / "benchmarks" / "results" / "evaluator.json"
RECBOLE_PYTHON = ROOT / "benchmarks" / ".recbole-venv" / "bin" / "python"
KS = (5, 10, 20)
RECBOLE_NAMES = {"hit": "hr", "precision": "precision", "recall": "recall", "ndcg": "ndcg", "mrr": "mrr",
                 "map": "map", "itemcoverage": "coverage"}


# --- synthetic data (numpy only: the RecBole worker cannot import this project) ----------------


def make_data(n_users: int, n_items: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """Item factors V ~ N(0, 1); each user's factor points at its relevant items, plus noise,
    so that relevant items rank high but not always first."""
    rng = np.random.default_rng(seed)
    item_f = rng.normal(size=(n_items, dim)).astype(np.float32)
    history, relevant = [], []
    for _ in range(n_users):
        hist = np.unique(rng.integers(0, n_items, size=1 + rng.poisson(19)))
        rel = np.setdiff1d(np.unique(rng.integers(0, n_items, size=1 + rng.poisson(2))), hist)
        history.append(rng.permutation(hist))
        relevant.append(rel if len(rel) else np.setdiff1d(np.arange(n_items), hist)[:1])
    user_f = np.stack([item_f[r].mean(axis=0) for r in relevant])
    user_f += rng.normal(scale=0.8, size=user_f.shape).astype(np.float32)
    flat = np.concatenate(history)
    return {
        "user_f": user_f.astype(np.float32),
        "item_f": item_f,
        "hist_flat": flat,
        "hist_off": np.cumsum([0] + [len(h) for h in history]),
        "rel_flat": np.concatenate(relevant),
        "rel_off": np.cumsum([0] + [len(r) for r in relevant]),
        "train_counts": np.bincount(flat, minlength=n_items),
    }


def ragged(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- workers (each runs in its own process) ---------------------------------------------------


def _score_fn(data):
    import torch

    user_f = torch.from_numpy(data["user_f"])
    item_t = torch.from_numpy(data["item_f"]).T.contiguous()
    return lambda users, history: user_f[torch.as_tensor(users)] @ item_t


def _inputs(data, n_users: int):
    from mmrec_pipeline.evaluation.metrics import EvalInputs

    return EvalInputs(
        n_items=data["item_f"].shape[0],
        users=np.arange(n_users),
        history=ragged(data["hist_flat"], data["hist_off"])[:n_users],
        relevant=ragged(data["rel_flat"], data["rel_off"])[:n_users],
    )


def timed(run, repeats: int) -> tuple[object, dict]:
    """Call ``run`` several times; the machine may be shared, so report the best and the median, and the
    process CPU time of the best-CPU run (with one thread, what a busy machine stretches least)."""
    seconds, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = run()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return result, {"seconds": min(seconds), "seconds_median": float(np.median(seconds)), "runs": seconds,
                    "cpu_seconds": min(cpu), "cpu_runs": cpu}


def worker_ours(data, args, extras: bool) -> dict:
    from mmrec_pipeline.evaluation.metrics import evaluate

    inputs = _inputs(data, len(data["user_f"]))
    kwargs = {"item_vectors": data["item_f"], "train_counts": data["train_counts"]} if extras else {}
    score = _score_fn(data)
    base = max_rss_mb()
    res, times = timed(lambda: evaluate(score, inputs, ks=KS, batch_size=args.batch_size, **kwargs), args.repeats)
    return {**times, "users": res.n_users, "baseline_rss_mb": base, "rows": res.rows}


def worker_score_only(data, args) -> dict:
    """The floor: computing the scores batch by batch and nothing else."""
    score = _score_fn(data)
    n_users = len(data["user_f"])

    def run():
        for lo in range(0, n_users, args.batch_size):
            score(np.arange(lo, min(lo + args.batch_size, n_users)), None)

    base = max_rss_mb()
    _, times = timed(run, args.repeats)
    return {**times, "users": n_users, "baseline_rss_mb": base}


def worker_naive(data, args) -> dict:
    from mmrec_pipeline.evaluation.metrics import naive_evaluate

    inputs = _inputs(data, args.naive_users)
    score = _score_fn(data)
    base = max_rss_mb()
    res, times = timed(lambda: naive_evaluate(score, inputs, ks=KS), args.repeats)
    return {**times, "users": res.n_users, "baseline_rss_mb": base}


def worker_verify(data, args) -> dict:
    """Ours vs naive on the subset, on identical cached scores (so any difference is the evaluator's),
    once with the continuous scores and once rounded to one decimal (heavy ties at the K boundary)."""
    import torch

    from mmrec_pipeline.evaluation.metrics import evaluate, naive_evaluate

    inputs = _inputs(data, args.naive_users)
    table = _score_fn(data)(inputs.users, inputs.history)
    kwargs = {"item_vectors": data["item_f"], "train_counts": data["train_counts"]}
    out = {}
    for name, scores in (("continuous", table), ("rounded_ties", torch.round(table, decimals=1))):
        def lookup(users, history, scores=scores):
            return scores[torch.as_tensor(users)]

        fast = evaluate(lookup, inputs, ks=KS, batch_size=64, **kwargs)
        slow = naive_evaluate(lookup, inputs, ks=KS, **kwargs)
        diff_rows = max(abs(a["value"] - b["value"]) for a, b in zip(fast.rows, slow.rows, strict=True))
        diff_users = max(float(np.nanmax(np.abs(fast.per_user[k] - slow.per_user[k]))) for k in fast.per_user)
        out[name] = {"max_abs_diff_rows": diff_rows, "max_abs_diff_per_user": diff_users}
    out["users"] = args.naive_users
    return out


def worker_recbole(data, args) -> dict:
    """RecBole 1.2.1's own evaluation code on the same scores: the trainer's full-sort masking
    (history -> -inf), then Collector.eval_batch_collect per batch and Evaluator.evaluate at the end."""
    import torch
    from recbole.config import Config
    from recbole.evaluator import Collector, Evaluator

    config = Config(
        model="Pop",
        dataset="synthetic",
        config_dict={
            "metrics": ["Hit", "MRR", "NDCG", "Precision", "Recall", "MAP", "ItemCoverage"],
            "topk": list(KS),
            "metric_decimal_place": 12,
            "eval_args": {"mode": "full", "order": "TO", "split": {"LS": "valid_and_test"}},
            "use_gpu": False,
            "state": "ERROR",
        },
    )
    n_items = data["item_f"].shape[0]
    history = ragged(data["hist_flat"], data["hist_off"])
    relevant = ragged(data["rel_flat"], data["rel_off"])
    score = _score_fn(data)
    n_users = len(data["user_f"])

    def run():
        collector = Collector(config)
        evaluator = Evaluator(config)
        for lo in range(0, n_users, args.batch_size):
            users = np.arange(lo, min(lo + args.batch_size, n_users))
            scores = score(users, None)
            rows = np.repeat(np.arange(len(users)), [len(history[u]) for u in users])
            items = np.concatenate([history[u] for u in users])
            scores[torch.as_tensor(rows), torch.as_tensor(items)] = -np.inf  # as Trainer._full_sort_batch_eval
            pos_u = np.repeat(np.arange(len(users)), [len(relevant[u]) for u in users])
            pos_i = np.concatenate([relevant[u] for u in users])
            collector.eval_batch_collect(scores, None, torch.as_tensor(pos_u), torch.as_tensor(pos_i))
        struct = collector.get_data_struct()
        # ItemCoverage's catalog size: set here, since get_data_struct() calls .cpu() on every entry
        # (a plain int set before it would raise). The trainer sets it from the training set instead.
        struct.set("data.num_items", n_items)
        # RecBole 1.2.1's metrics use np.float etc. (gone since numpy 1.24); Config() put the aliases back.
        return evaluator.evaluate(struct)

    base = max_rss_mb()
    result, times = timed(run, args.repeats)
    import recbole

    values = {key: float(v) for key, v in result.items()}
    return {**times, "users": n_users, "baseline_rss_mb": base, "metrics": values,
            "recbole_version": recbole.__version__,
            "numpy_version": np.__version__, "torch_version": torch.__version__}


# --- driver -----------------------------------------------------------------------------------


def run_worker(python: Path | str, name: str, data_path: Path, args) -> dict:
    cmd = [str(python), __file__, "--worker", name, "--data", str(data_path),
           "--batch-size", str(args.batch_size), "--naive-users", str(args.naive_users),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(name: str, res: dict, n_users: int, n_items: int, note: str) -> dict:
    if "error" in res:
        return {"method": name, "error": res["error"], "stderr_tail": res.get("stderr_tail"), "note": note}
    per_user = res["seconds"] / res["users"]
    return {
        "method": name,
        "users_measured": res["users"],
        "seconds_measured": round(res["seconds"], 3),
        "seconds_measured_median": round(res["seconds_median"], 3),
        "cpu_seconds_measured": round(res["cpu_seconds"], 3),
        "cpu_seconds_all_users": round(res["cpu_seconds"] / res["users"] * n_users, 2),
        "repeats": len(res["runs"]),
        "seconds_all_users": round(per_user * n_users, 2),
        "users_per_second": round(1 / per_user, 1),
        "user_items_per_second": round(n_items / per_user),
        "peak_rss_mb": round(res["peak_rss_mb"], 1),
        "rss_before_eval_mb": round(res["baseline_rss_mb"], 1),
        "load_average_1m_after": round(res["load_average_1m"], 2),
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--naive-users", type=int, default=300, help="subset for the naive loop and the check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the best is reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every method (1: stable timings on a shared machine)")
    parser.add_argument("--skip-recbole", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["score_only", "ours", "ours_full", "naive", "verify"],
                        choices=["score_only", "ours", "ours_full", "naive", "verify"],
                        help="which of our methods and checks to run (fewer for a large size)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(ROOT))  # the project, without needing it installed
        data = dict(np.load(args.data))
        workers = {
            "score_only": lambda: worker_score_only(data, args),
            "ours": lambda: worker_ours(data, args, extras=False),
            "ours_full": lambda: worker_ours(data, args, extras=True),
            "naive": lambda: worker_naive(data, args),
            "verify": lambda: worker_verify(data, args),
            "recbole": lambda: worker_recbole(data, args),
        }
        out = workers[args.worker]()
        out["peak_rss_mb"] = max_rss_mb()
        out["load_average_1m"] = os.getloadavg()[0]  # other work on a shared machine skews timings
        print(json.dumps(out))
        return

    args.naive_users = min(args.naive_users, args.users)
    machine = {**machine_info(), "numpy": np.__version__}  # RecBole's venv pins its own numpy
    WORK.mkdir(parents=True, exist_ok=True)
    data_path = WORK / f"evaluator_{args.users}x{args.items}_d{args.dim}_s{args.seed}.npz"
    np.savez(data_path, **make_data(args.users, args.items, args.dim, args.seed))

    skipped = {"error": "not run (--methods)"}
    raw = {name: run_worker(sys.executable, name, data_path, args) if name in args.methods else skipped
           for name in ("score_only", "ours", "ours_full", "naive")}
    if args.skip_recbole:
        raw["recbole"] = {"error": "skipped (--skip-recbole)"}
    elif not RECBOLE_PYTHON.exists():
        raw["recbole"] = {"error": f"{RECBOLE_PYTHON} missing; create it: python3 -m venv benchmarks/.recbole-venv "
                          "&& benchmarks/.recbole-venv/bin/pip install torch==2.14.1 'numpy<2' "
                          "'setuptools>=77,<80' 'pandas<2.3' recbole==1.2.1"}
    else:
        raw["recbole"] = run_worker(RECBOLE_PYTHON, "recbole", data_path, args)
    verify = run_worker(sys.executable, "verify", data_path, args) if "verify" in args.methods else skipped

    notes = {
        "score_only": "only the low-rank score function, batch by batch: the floor for every method",
        "ours": "mmrec evaluate(): accuracy metrics + coverage (RecBole's metric set)",
        "ours_full": "mmrec evaluate() + diversity (cosine of the 64-d factors) + novelty",
        "naive": f"naive_evaluate() per-user loop on the first {args.naive_users} users, extrapolated linearly",
        "recbole": "RecBole 1.2.1 Collector.eval_batch_collect + Evaluator.evaluate (own venv)",
    }
    table = [summarise(name, raw[name], args.users, args.items, notes[name]) for name in notes]

    comparison = None
    if "metrics" in raw["recbole"] and "rows" in raw["ours"]:
        ours = {(r["metric"], r["k"]): r["value"] for r in raw["ours"]["rows"]}
        diffs = {key: abs(value - ours[(RECBOLE_NAMES[key.split("@")[0]], int(key.split("@")[1]))])
                 for key, value in raw["recbole"]["metrics"].items()}
        comparison = {"max_abs_diff": max(diffs.values()), "per_metric_abs_diff": diffs,
                      "recbole_env": {k: raw["recbole"][k] for k in ("recbole_version", "numpy_version",
                                                                     "torch_version")}}

    report = {
        "benchmark": "evaluator",
        "machine": machine,
        "setup": {"users": args.users, "items": args.items, "factor_dim": args.dim, "ks": list(KS),
                  "batch_size": args.batch_size, "seed": args.seed, "exclude_history": True,
                  "torch_threads": args.threads, "repeats": args.repeats,
                  "mean_history": float(np.mean(np.diff(np.load(data_path)["hist_off"]))),
                  "mean_relevant": float(np.mean(np.diff(np.load(data_path)["rel_off"])))},
        "results": table,
        "metrics_ours": raw["ours"].get("rows"),
        "check_ours_vs_naive": verify,
        "check_ours_vs_recbole": comparison,
        "recbole_raw": {k: v for k, v in raw["recbole"].items() if k != "metrics"},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2))

    print(f"{args.users} users x {args.items} items, K={KS}, {args.threads} torch thread(s) of "
          f"{machine['cores_usable']} cores, load {machine['load_average_1m_5m_15m_at_start'][0]}, "
          f"torch {machine['torch']}, best of {args.repeats}")
    print(f"{'method':<10} {'user·items/s':>14} {'users/s':>10} {'s (all)':>9} {'CPU s':>7} {'peak MB':>9} {'pre MB':>8}  note")
    for row in table:
        if "error" in row:
            print(f"{row['method']:<10} ERROR {row['error']}")
            continue
        print(f"{row['method']:<10} {row['user_items_per_second']:>14,} {row['users_per_second']:>10,.0f} "
              f"{row['seconds_all_users']:>9.2f} {row['cpu_seconds_all_users']:>7.2f} {row['peak_rss_mb']:>9.0f} {row['rss_before_eval_mb']:>8.0f}  "
              f"{row['note']}")
    if "error" in verify:
        print("ours vs naive:", verify.get("stderr_tail") or verify["error"])
    else:
        for name in ("continuous", "rounded_ties"):
            print(f"ours vs naive ({verify['users']} users, {name} scores): max abs diff "
                  f"{verify[name]['max_abs_diff_rows']:.3g} (rows), {verify[name]['max_abs_diff_per_user']:.3g} "
                  "(per user)")
    if comparison:
        print(f"ours vs RecBole metric values: max abs diff {comparison['max_abs_diff']:.3g}")
    print(f"saved {args.results}")


if __name__ == "__main__":
    main()
