"""The `recbole` protocol against RecBole 1.2.1's own data preparation and evaluator, on ml-100k.

    python benchmarks/recbole_protocol.py [--sasrec-epochs 1]

Same trained model, same scores, two evaluation paths:
- ours: `make_split(..., "recbole")` (5-core on users and items, leave-one-out) -> `RecDataset` (pool = the
  items left) -> `evaluate_model` (history masked for general models, not for sequential ones);
- RecBole: the raw ml-100k interactions as atomic files, RecBole's own filtering (`user_inter_num_interval`,
  `item_inter_num_interval` = [5,inf)), `LS: valid_and_test` split, full-sort dataloaders and `Trainer.evaluate`
  (its masking, Collector and Evaluator), with a replay model whose `full_sort_predict` returns our scores.
Each user's interactions are numbered 0, 1, 2, ... in our order as RecBole's timestamp, so that both sort ties
in time the same way. Two models: EASE (a general model: RecBole masks history) and SASRec (sequential: RecBole
masks nothing), each trained on our recbole split's train stage. Also checked: that both sides evaluate the same
(user, test item) pairs. `RECBOLE_PYTHON` overrides the RecBole venv's interpreter. Results: a printed table and `benchmarks/results/recbole_protocol.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "recbole_protocol"
RESULTS = ROOT / "benchmarks" / "results" / "recbole_protocol.json"
RECBOLE_PYTHON = Path(os.environ.get("RECBOLE_PYTHON", ROOT / "benchmarks" / ".recbole-venv" / "bin" / "python"))
DATASET = "ml100k_raw"
METRICS = {"ndcg": "ndcg", "hr": "hit", "mrr": "mrr", "recall": "recall"}  # ours -> RecBole's result key
TOL = 1e-6


# --- ours (project venv) --------------------------------------------------------------------------


def run_ours(sasrec_epochs: int) -> dict:
    """Split, train, evaluate under `recbole`; write RecBole's atomic file and each model's score matrix."""
    sys.path.insert(0, str(ROOT))
    import polars as pl
    import torch

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data import schema
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.sources.recbole import read
    from mmrec_pipeline.data.splits import make_split
    from mmrec_pipeline.evaluation.protocols import evaluate_model, is_sequential
    from mmrec_pipeline.models.ease import EASE
    from mmrec_pipeline.models.sasrec import SASRec

    source = Path(os.environ.get("MMREC_DATA", ROOT.parent / "shared" / "data")) / "ml-100k"
    tables = schema.validate(read(source, {}), "ml-100k")
    inter = tables.interactions
    folder = WORK / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    order = (inter.with_row_index("_row").sort(["user_id", "ts", "_row"])
             .with_columns(pl.int_range(pl.len()).over("user_id").alias("pos")))
    with open(folder / f"{DATASET}.inter", "w") as f:  # the raw interactions: RecBole filters them itself
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{p}\n" for u, i, p in order.select("user_id", "item_id", "pos").iter_rows())

    split = make_split(inter, "recbole")
    data = RecDataset.from_tables("ml-100k", split, tables.items, protocol="recbole")
    out = {"raw_interactions": inter.height, "users": data.n_users, "items": data.n_items,
           "interactions": split.height, "models": {}}
    torch.manual_seed(0)
    models = {"ease": EASE(EASE.Config()),
              "sasrec": SASRec(SASRec.Config(epochs=sasrec_epochs, patience=sasrec_epochs + 1,
                                             eval_every=sasrec_epochs, seed=0))}
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(data, None, Compute(device="cpu"), None)
        train_s = time.perf_counter() - start
        table, full = evaluate_model(model, data, name, sampled=None, cold=False)
        inputs = data.eval_inputs("test")
        with torch.no_grad():
            scores = torch.as_tensor(model.score(inputs.users, inputs.history)).double().numpy()
        np.savez(WORK / f"scores_{name}.npz", scores=scores,
                 users=np.asarray([str(u) for u in data.user_ids[inputs.users]]),
                 items=np.asarray([str(i) for i in data.items["item_id"].to_list()]),
                 positives=np.asarray([str(data.items["item_id"][int(r[0])]) for r in inputs.relevant]))
        values = {r["metric"]: r["value"] for r in table.filter(pl.col("k") == 10).iter_rows(named=True)}
        out["models"][name] = {"sequential": is_sequential(model), "history_masked": not is_sequential(model),
                               "train_seconds": round(train_s, 1),
                               "users_evaluated": full.n_users, **{f"{m}@10": values[m] for m in METRICS}}
    return out


# --- RecBole (its own venv) -----------------------------------------------------------------------


def run_recbole(name: str, sequential: bool) -> dict:
    """RecBole's data preparation and Trainer.evaluate on our scores for one model."""
    import torch

    np.float, np.bool = float, bool  # RecBole 1.2.1's metrics use aliases numpy 1.24+ removed
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.abstract_recommender import GeneralRecommender, SequentialRecommender
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    tmp = tempfile.mkdtemp(prefix="recbole-")
    os.chdir(tmp)  # RecBole writes log/ under the working directory
    config = Config(model="SASRec" if sequential else "Pop", dataset=DATASET, config_dict={
        "data_path": str(WORK), "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit", "MRR", "Recall"], "topk": [10], "metric_decimal_place": 12, "use_gpu": False,
        "train_neg_sample_args": None, "loss_type": "CE", "MAX_ITEM_LIST_LENGTH": 50,
        "show_progress": False, "state": "ERROR", "checkpoint_dir": tmp, "seed": 2020})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, _valid, test = data_preparation(config, dataset)
    saved = np.load(WORK / f"scores_{name}.npz")
    row_of = {u: r for r, u in enumerate(saved["users"].tolist())}
    col_of = {i: c for c, i in enumerate(saved["items"].tolist())}
    uid, iid = dataset.uid_field, dataset.iid_field
    user_tokens = dataset.field2id_token[uid]
    # our column of each RecBole internal item id (0 = RecBole's padding item, never ranked)
    cols = torch.as_tensor([col_of.get(t, -1) for t in dataset.field2id_token[iid].tolist()])
    missing = int((cols[1:] < 0).sum())
    scores = torch.as_tensor(saved["scores"])
    base = SequentialRecommender if sequential else GeneralRecommender

    class Replay(base):
        """Returns the project's scores for the batch's users, in RecBole's item order."""

        def __init__(self, config, data):
            super().__init__(config, data)
            self.unused_weight = torch.nn.Parameter(torch.zeros(1))  # RecBole's Trainer builds an optimizer

        def calculate_loss(self, interaction):
            raise RuntimeError("Replay is never trained: it only replays the project's full-sort scores")

        def predict(self, interaction):
            raise RuntimeError("Replay serves full-sort evaluation only (full_sort_predict)")

        def full_sort_predict(self, interaction):
            rows = torch.as_tensor([row_of[user_tokens[u]] for u in interaction[uid].tolist()])
            out = scores[rows][:, cols.clamp(min=0)]
            out[:, cols < 0] = -torch.inf
            return out.reshape(-1)

    model = Replay(config, train.dataset)
    result = Trainer(config, model).evaluate(test, load_best_model=False, show_progress=False)
    pairs = []  # (user token, test item token) as RecBole's test loader yields them
    for batch in test:
        interaction, _, positive_u, positive_i = batch
        users = interaction[uid].tolist()
        pairs += [(user_tokens[users[u]], dataset.field2id_token[iid][i])
                  for u, i in zip(positive_u.tolist(), positive_i.tolist())]
    import recbole

    return {"metrics": {k: float(v) for k, v in result.items()}, "users": len({p[0] for p in pairs}),
            "items": dataset.item_num - 1, "interactions": dataset.inter_num, "items_missing_in_ours": missing,
            "test_pairs": sorted(pairs), "recbole": recbole.__version__}


# --- driver ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sasrec-epochs", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sequential", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_recbole(args.worker, args.sequential)))
        return

    start = time.perf_counter()
    machine = machine_info()
    ours = run_ours(args.sasrec_epochs)
    report = {"benchmark": "recbole_protocol", "machine": machine, "ours": {k: v for k, v in ours.items()
                                                                           if k != "models"}, "models": {}}
    for name, res in ours["models"].items():
        saved = np.load(WORK / f"scores_{name}.npz")
        our_pairs = sorted(zip(saved["users"].tolist(), saved["positives"].tolist()))
        if not RECBOLE_PYTHON.exists():
            rb = {"error": f"{RECBOLE_PYTHON} missing; see ../shared/ENVIRONMENT.md for how to create it"}
        else:
            cmd = [str(RECBOLE_PYTHON), __file__, "--worker", name] + (["--sequential"] if res["sequential"] else [])
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=1800)
            rb = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                  else {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]})
        entry = {"ours": res, "recbole": {k: v for k, v in rb.items() if k != "test_pairs"}}
        if "metrics" in rb:
            entry["same_test_pairs"] = [tuple(p) for p in rb["test_pairs"]] == our_pairs
            entry["abs_diff"] = {f"{m}@10": abs(res[f"{m}@10"] - rb["metrics"][f"{r}@10"]) for m, r in METRICS.items()}
            entry["ndcg_ratio_ours_over_recbole"] = res["ndcg@10"] / rb["metrics"]["ndcg@10"]
            entry["within_tolerance"] = max(entry["abs_diff"].values()) <= TOL and entry["same_test_pairs"]
        report["models"][name] = entry
    report["tolerance"] = TOL
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    machine["load_average_1m_5m_15m_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))

    print(f"ml-100k under `recbole`: {ours['users']} users x {ours['items']} items, {ours['interactions']} "
          f"interactions (raw {ours['raw_interactions']})")
    print("model | masked | ours NDCG@10 | RecBole NDCG@10 | |diff| max over NDCG/HR/MRR/Recall | same pairs")
    for name, e in report["models"].items():
        if "abs_diff" in e:
            print(f"{name} | {e['ours']['history_masked']} | {e['ours']['ndcg@10']:.9f} | "
                  f"{e['recbole']['metrics']['ndcg@10']:.9f} | {max(e['abs_diff'].values()):.2e} | "
                  f"{e['same_test_pairs']}")
        else:
            print(f"{name} | {e['recbole']}")
    print(f"saved {RESULTS.relative_to(ROOT)} in {report['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
