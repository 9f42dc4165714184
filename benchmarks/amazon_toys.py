"""Amazon Toys (the S3-Rec/ICLRec 5-core split): our models beside the published figures.

    MMREC_DATA=../shared/data python benchmarks/amazon_toys.py --rows sasrec_ss256 [--time-budget S] [--threads 1]
    python benchmarks/amazon_toys.py --rows sasrec_ss256_per_target,sasrec_full_ce --patience 10
    python benchmarks/amazon_toys.py --rows sasrec_full_ce_attn_ffn_dropout --refit  # row `<row>_refit`
    python benchmarks/amazon_toys.py --markdown      # the README table from the results file

Protocol (the papers'): leave-one-out (last item test, second last valid), full ranking over all 11,924
items, history items excluded; the data set is the registry's `amazon-toys` entry, read and split by the
pipeline's own functions (sequence reader, 5-core on users = no-op here, `loo` split). Each row is trained by
`models/runner.train_variants` exactly as the pipeline's model asset does: its `search_space` is tuned on
validation NDCG@10 (full catalog), test is scored once with the chosen point. Sequential rows early-stop on
validation NDCG@10 (3,000 valid users), with the row's patience or `--patience`, and stop at `--time-budget`
training seconds when given (the fit report says which ended the run, and the curve shows whether validation was
still rising). `--refit` retrains rows already run on train + valid for their best epoch count (no early stopping)
and scores test: the protocol `loo+refit` ("leave-one-out, refit on train+valid"), saved as `<row>_refit`.

Every published row is `loo`, read from the code behind it: blondered/transformer_benchmark's
`validate_model_on_holdout` (the SASRec / eSASRec rows) fits once on every interaction but each user's last one,
with the second-last held out as the early-stopping target (`get_val_mask_func_all`), and nothing is retrained;
the S3-Rec / ICLRec loaders (the TIGER and S3-Rec rows) train on `items[1:-2]`. So a published figure is compared
with `loo` rows only; `loo+refit` rows are printed in a table of their own, never beside a published row.

Output: a table and `benchmarks/results/amazon_toys.json`, one entry per row (merged into the file, so rows
can run in separate processes): config, validation grid, s/epoch (wall, and CPU, which other jobs on the machine
inflate much less), epochs, best epoch, valid and test Recall@10 / NDCG@10 with 95% percentile-bootstrap CIs over
test users, and the machine of the row (`benchmarks/machine.py`: CPU, flags, load at the start).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_info

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.data import schema
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.data.sources import reader
from mmrec_pipeline.data.splits import filter_and_split
from mmrec_pipeline.evaluation.protocols import per_user_stage, per_user_table
from mmrec_pipeline.evaluation.significance import bootstrap_ci
from mmrec_pipeline.models import MODELS
from mmrec_pipeline.models.base import ItemFeatures
from mmrec_pipeline.models.runner import build, refit_test, train_variants
from mmrec_pipeline.registry import get_dataset
from mmrec_pipeline.storage import Lake

RESULTS = ROOT / "benchmarks" / "results" / "amazon_toys.json"
WORK = ROOT / "benchmarks" / ".work" / "amazon_toys"


def rows() -> dict[str, tuple[str, dict]]:
    """row -> (registry model, dataset overrides incl. runner keys). `sasrec_ss256` is the published SASRec
    configuration (embedding 64, 1 block, 1 head, dropout 0.2, max length 50, sampled softmax over 256 negatives
    shared by a batch, lr 1e-3, batch 128, up to 200 epochs, patience 50); the SASRec options are that
    configuration with a field or two changed (the registry entry's `sasrec` is the rows' validation winner); the
    other rows are the registry entry's `models:`. Nothing here was chosen on test."""
    models = get_dataset("amazon-toys").models
    # the registry's configuration before issue 36's measurements (Adam's default beta2, the published patience
    # 50), which the option rows below change one field at a time
    before = {**models["sasrec"], "adam_beta2": 0.999, "patience": 50}
    sasrec = {**before, "negatives": 256, "negatives_per": "batch", "gated": False,  # the published one
              "attention_dropout": 0.0, "inner_dropout": 0.0}
    per_target = {**sasrec, "negatives_per": "target"}
    out = {"sasrec_ss256": ("sasrec", sasrec),
           # RecTools (eSASRec's published runs) and gSASRec draw negatives per target, not one set per batch
           "sasrec_ss256_per_target": ("sasrec", per_target),
           # gBCE as gSASRec trains it (per-target negatives; with one shared set it did not learn: valid NDCG@10
           # <= 0.0006 after 4 epochs, measured 2026-11-28)
           "sasrec_gbce256_per_target": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75}),
           "sasrec_ss256_ligr_per_target": ("sasrec", {**per_target, "gated": True}),  # eSASRec's layers
           "sasrec_ss256_ligr": ("sasrec", {**sasrec, "gated": True}),
           "sasrec_full_ce": ("sasrec", {**sasrec, "negatives": 0}),
           # RecTools' SASRec layers also drop attention weights and the feed-forward layer's inner activations
           "sasrec_full_ce_attn_ffn_dropout": ("sasrec", {**sasrec, "negatives": 0, "attention_dropout": 0.2,
                                                          "inner_dropout": 0.2}),
           "sasrec_ss256_per_target_attn_ffn_dropout": ("sasrec", {**per_target, "attention_dropout": 0.2,
                                                                   "inner_dropout": 0.2}),
           # Kang & McAuley's block layout (RecTools' SASRec layers keep it): only the query normalised
           "sasrec_full_ce_attn_ffn_dropout_kang": ("sasrec", {**sasrec, "negatives": 0, "attention_dropout": 0.2,
                                                               "inner_dropout": 0.2, "layout": "sasrec"}),
           # the dropout runs peak by epoch 9 and then overfit: more of every dropout
           "sasrec_full_ce_all_dropout05": ("sasrec", {**sasrec, "negatives": 0, "dropout": 0.5,
                                                       "attention_dropout": 0.5, "inner_dropout": 0.5}),
           # eSASRec's own run config for this split (configs/paper/loo/s3_vanilla.yaml) has 256 factors where its
           # README table says 64
           "sasrec_ss256_d256": ("sasrec", {**sasrec, "hidden_size": 256}),
           "sasrec_ss256_d256_ligr_per_target": ("sasrec", {**per_target, "gated": True, "hidden_size": 256}),
           # issue 36, RecTools' training against the registry's configuration before it, one difference a row
           # (docs/SASREC_DIFF.md): xavier_normal_ on every weight matrix with unscaled input embeddings
           "sasrec_xavier": ("sasrec", {**before, "init": "xavier", "scale_embeddings": False}),
           "sasrec_xavier_scaled": ("sasrec", {**before, "init": "xavier"}),  # input still times sqrt(d)
           "sasrec_beta2_098": ("sasrec", {**before, "adam_beta2": 0.98}),
           # RecTools' SASRec layer: feed-forward as wide as the embedding, ReLU
           "sasrec_ff64_relu": ("sasrec", {**before, "inner_size": 64, "activation": "relu"}),
           "sasrec_latest_window": ("sasrec", {**before, "train_windows": "latest"}),
           # the published run's 256 factors (configs/paper/loo/s3_vanilla.yaml) on top of the adopted beta2
           "sasrec_beta2_098_d256": ("sasrec", {**before, "adam_beta2": 0.98, "hidden_size": 256}),
           # issue 36, the remaining differences from RecTools, each on top of the registry configuration (beta2
           # 0.98): xavier_normal_ with the sqrt(d) input scaling kept
           "sasrec_beta2_098_xavier_scaled": ("sasrec", {**models["sasrec"], "init": "xavier"}),
           # the causal mask only, padded positions zeroed and read as keys, sequences at the full 50 (s3_vanilla)
           "sasrec_beta2_098_no_key_padding_mask": ("sasrec", {**models["sasrec"], "key_padding_mask": False}),
           # the full softmax over the padding id too, as RecTools' logits cover every item id
           "sasrec_beta2_098_pad_class": ("sasrec", {**models["sasrec"], "softmax_pad_class": True}),
           # early stopping on every valid user instead of 3,000 sampled; and on Recall@10, as RecTools' benchmark
           "sasrec_beta2_098_valid_all": ("sasrec", {**models["sasrec"], "valid_users": 0}),
           "sasrec_beta2_098_valid_all_recall": ("sasrec", {**models["sasrec"], "valid_users": 0,
                                                            "valid_metric": "recall"}),
           # RecTools' whole published Toys SASRec (s3_vanilla.yaml) in our code, every difference above together:
           # 256 uniform negatives per target, 256 factors, Kang's layout with a 256-wide ReLU feed-forward, xavier
           # with unscaled input, no key-padding mask, the latest-window cut, early stopping on all-user Recall@10
           "sasrec_rectools_joint": ("sasrec", {**models["sasrec"], "negatives": 256, "negatives_per": "target",
                                                "hidden_size": 256, "inner_size": 256, "activation": "relu",
                                                "layout": "sasrec", "init": "xavier", "scale_embeddings": False,
                                                "key_padding_mask": False, "train_windows": "latest",
                                                "valid_users": 0, "valid_metric": "recall", "patience": 10}),
           # gBCE with the input embeddings unscaled (gSASRec and RecTools feed them as they are): whether the
           # sqrt(d)-scaled tied table is why gBCE stays at popularity level
           "sasrec_gbce256_per_target_unscaled": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75,
                                                             "scale_embeddings": False}),
           # RecTools' default calibration t = 0.2 (beta 0.80 with 256 of 11,924 items) instead of gSASRec's 0.75
           "sasrec_gbce256_per_target_t02": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.2}),
           # an output bias, so that lowering every logit need not move the tied table (docs/SASREC_DIFF.md, gBCE)
           "sasrec_gbce256_per_target_bias": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75,
                                                         "output_bias": True}),
           # Kang & McAuley's BCE (one negative per target): does any BCE-type loss train in this configuration?
           "sasrec_bce1": ("sasrec", {**sasrec, "loss": "bce", "negatives": 0}),
           # gBCE with fewer per-target negatives (gSASRec's ablation varies them): does the collapse need many?
           "sasrec_gbce1_per_target": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75, "negatives": 1}),
           "sasrec_gbce16_per_target": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75, "negatives": 16}),
           "sasrec_gbce64_per_target": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75, "negatives": 64}),
           # gBCE 256 with a 10x learning rate: its loss is a mean over N + 1 = 257 logits, so gradients are small
           "sasrec_gbce256_per_target_lr01": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75, "lr": 0.01}),
           # gBCE 256 with Adam's beta2 0.98 (RecTools'): a shorter memory of the first steps' large negative gradients
           "sasrec_gbce256_per_target_beta2_098": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75,
                                                              "adam_beta2": 0.98}),
           # the same, run with a longer budget (--time-budget 300 --patience 30)
           "sasrec_gbce256_per_target_beta2_098_long": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75,
                                                                   "adam_beta2": 0.98}),
           # the same as _lr01, run with a longer budget (--time-budget 300 --patience 30): where does it go past the plateau?
           "sasrec_gbce256_per_target_lr01_long": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75,
                                                              "lr": 0.01}),
           # gBCE 256 with a separate output item table, as gSASRec's own code trains it (reuse_item_embeddings=False)
           "sasrec_gbce256_per_target_untied": ("sasrec", {**per_target, "loss": "gbce", "gbce_t": 0.75,
                                                           "tied_output": False}),
           # the control: the same separate output table under the sampled softmax
           "sasrec_ss256_per_target_untied": ("sasrec", {**per_target, "tied_output": False})}
    # issue 36, GRU4Rec and BERT4Rec: the options that moved SASRec, on the Toys entry's configuration before the
    # issue (sampled softmax over 256 negatives, Adam's default beta2, patience 10); where CPU time allowed one row,
    # two options go in together (GRU4Rec: the full softmax with beta2 0.98; BERT4Rec: beta2 0.98 with 60% masked)
    gru = {"hidden_size": 64, "max_len": 50, "negatives": 256, "epochs": 200, "patience": 10, "search_space": {}}
    bert = {**gru, "n_layers": 1, "n_heads": 1}
    out |= {"gru4rec_ss256": ("gru4rec", gru),  # the configuration before (row `gru4rec` when it ran), for seeds
            "gru4rec_beta2_098": ("gru4rec", {**gru, "adam_beta2": 0.98}),
            "gru4rec_full_ce_beta2_098": ("gru4rec", {**gru, "negatives": 0, "adam_beta2": 0.98}),
            "bert4rec_full_ce": ("bert4rec", {**bert, "negatives": 0}),
            # the share of masked items in BERT4Rec's own Amazon Beauty run (FeiSun/BERT4Rec run_beauty.sh,
            # masked_lm_prob 0.6): 2.2x the cloze targets per epoch on Toys' short sequences (65,889 vs 29,740)
            "bert4rec_full_ce_beta2_098_mask06": ("bert4rec", {**bert, "negatives": 0, "adam_beta2": 0.98,
                                                               "mask_prob": 0.6})}
    # `sasrec`: the registry entry's configuration as it is (what `mmrec run --dataset amazon-toys` trains)
    return out | {name: (name, models[name]) for name in ("sasrec", "gru4rec", "bert4rec", "ease", "item_knn")}


# The published rows' protocol, from their code (module notes): trained without each user's last two items'
# targets (the second-last holds early stopping), the validation item only an input at test time.
PUBLISHED_PROTOCOL = "loo"
PUBLISHED = {  # Recall@10 / NDCG@10 on this split, as collected in the eSASRec repository's README
    "SASRec, sampled softmax 256 (best published)": (0.0970, 0.0580),
    "eSASRec": (0.0939, 0.0538),
    "TIGER": (0.0712, 0.0432),
    "S3-Rec": (0.0700, 0.0376),
}


def load_toys() -> RecDataset:
    spec = get_dataset("amazon-toys")
    tables = schema.validate(reader(spec.source)(spec.data_dir(Lake()), spec.options), spec.name)
    split, _ = filter_and_split(tables.interactions, spec.split, spec.min_user_interactions)
    return RecDataset.from_tables(spec.name, split, tables.items, protocol=spec.split,
                                  repeats_relevant=spec.repeats_relevant)


def value(table, metric: str, protocol: str) -> float:
    t = table.filter((table["metric"] == metric) & (table["k"] == 10) & (table["protocol"] == protocol))
    return float(t["value"][0])


def run_row(row: str, data: RecDataset, time_budget: float, patience: int, seeds: int,
            log: logging.Logger) -> dict:
    model_name, overrides = rows()[row]
    cls = MODELS[model_name]
    overrides = dict(overrides)
    overrides.pop("refit", None)  # the benchmark scores the refit as a row of its own (`--refit`)
    if seeds > 1:
        overrides["seeds"] = seeds
    if time_budget and "epochs" in overrides:
        overrides["max_train_seconds"] = time_budget
    if patience and "patience" in overrides:
        overrides["patience"] = patience
    cpu0, wall0 = time.process_time(), time.perf_counter()
    runs, _ = train_variants(model_name, cls, {"default": {}}, data, ItemFeatures(), Compute(device="cpu"),
                             WORK / row, dataset_overrides=overrides, log=log,
                             feature_cache=Lake().feature_cache())
    run = runs[0]
    report = run.report
    pu = per_user_stage(run.per_user, "test")  # test rows; with seeds, each user's mean over them (as the report)
    curve = report.get("curve", [])
    stop_metric = f"valid_{overrides.get('valid_metric', 'ndcg')}@10"  # the early-stopping value of the curve
    train_s = sum(r["train_seconds"] for r in curve)
    out = {
        "model": model_name, "config": {k: v for k, v in overrides.items() if k != "search_space"},
        "search_space": overrides.get("search_space"), "validation_grid": run.grid, "chosen": run.chosen,
        "epochs": report.get("epochs"), "best_epoch": report.get("best_epoch"),
        "stopped_by": report.get("stopped_by"),
        "s_per_epoch_wall": train_s / len(curve) if curve else None,
        "fit_seconds_wall": report.get("seconds"), "cpu_seconds_total": time.process_time() - cpu0,
        "wall_seconds_total": time.perf_counter() - wall0,
        "valid_curve": [[r["epoch"], round(r.get(stop_metric, float("nan")), 5)] for r in curve],
        "valid_curve_metric": stop_metric,
        "valid": {m: value(run.metrics, m, f"{data.protocol}@valid") for m in ("recall", "ndcg")},
        "test": {m: value(run.metrics, m, data.protocol) for m in ("recall", "ndcg")},
        "test_ci95": {m: bootstrap_ci(pu[f"{m}@10"].to_numpy()) for m in ("recall", "ndcg")},
        "test_users": pu.height,
    }
    if run.seeds > 1:  # test rows are the mean over seeds; the std is the seeds' sample std
        out["seeds"], out["test_ci95_of"] = run.seeds, "each user's mean over the seeds"
        out["test_std"] = {m: value(run.metrics, f"{m}_std", data.protocol) for m in ("recall", "ndcg")}
    if curve:  # CPU seconds of the whole run per epoch (validation included): the load-independent figure
        out["cpu_s_per_epoch_incl_validation"] = out["cpu_seconds_total"] / len(curve)
    return out


def refit_row(row: str, data: RecDataset, done: dict, log: logging.Logger) -> dict:
    """`row` again with its validation-chosen setting and best epoch count, retrained on train + valid and scored
    on test (the runner's `refit: true`, protocol `loo+refit`), without re-running its validation run: the
    epochs come from `done`, that run's result. Nothing is chosen here."""
    model_name, overrides = rows()[row]
    cls = MODELS[model_name]
    config = build(cls, {}, {**overrides, **done["chosen"]}).config  # runner keys (search_space, refit) left out
    cpu0 = time.process_time()
    table, full = refit_test(cls, config, {"best_epoch": done.get("best_epoch") or 0}, data, ItemFeatures(),
                             Compute(device="cpu"), model_name, "default", log=log)
    protocol = f"{data.protocol}+refit"
    pu = per_user_table(full, data, model_name, "default", protocol)
    return {"model": model_name, "config": {k: v for k, v in overrides.items() if k != "search_space"},
            "protocol": protocol, "refit_of": row, "chosen": done["chosen"], "epochs": done.get("best_epoch"),
            "best_epoch": None, "stopped_by": "epochs (the row's best on validation)",
            "cpu_seconds_total": time.process_time() - cpu0,
            "valid": done["valid"],  # the validation run's, which chose the epochs
            "test": {m: value(table, m, protocol) for m in ("recall", "ndcg")},
            "test_ci95": {m: bootstrap_ci(pu[f"{m}@10"].to_numpy()) for m in ("recall", "ndcg")},
            "test_users": pu.height}


@contextlib.contextmanager
def locked(path: Path):
    WORK.mkdir(parents=True, exist_ok=True)  # the lock lives in the ignored work folder, not beside results
    with open(WORK / f"{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save(rows: dict) -> dict:
    with locked(RESULTS):
        doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": {}}
        old_machine = doc.pop("machine", None)  # results before rows kept their own machine
        for r in doc["rows"].values():
            r.setdefault("machine", old_machine)
        doc["rows"].update(rows)
        doc.update({
            "protocol": "amazon-toys loo: last item test, second last valid; full ranking over 11,924 items, "
                        "history excluded; chosen on validation NDCG@10",
            "published": {k: {"recall@10": r, "ndcg@10": n} for k, (r, n) in PUBLISHED.items()},
            "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        })
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(RESULTS)
    return doc


def protocol_of(row: dict) -> str:
    """A result row's protocol: `loo+refit` for a refit row, else `loo` (rows before the field were `loo`)."""
    return row.get("protocol") or (f"{PUBLISHED_PROTOCOL}+refit" if row.get("refit_of") else PUBLISHED_PROTOCOL)


def by_protocol(doc: dict) -> dict[str, dict]:
    """{protocol: {row: result}}, the published protocol first: each protocol is a table of its own."""
    out: dict[str, dict] = {PUBLISHED_PROTOCOL: {}}
    for name, r in doc["rows"].items():
        out.setdefault(protocol_of(r), {})[name] = r
    return out


def print_table(doc: dict) -> None:
    for protocol, group in by_protocol(doc).items():
        print(f"protocol {protocol}" + ("" if protocol == PUBLISHED_PROTOCOL else
                                        " (not comparable with the published rows, which are "
                                        f"{PUBLISHED_PROTOCOL})"))
        print(f"{'row':<40}{'valid NDCG@10':>14}{'test R@10':>11}{'test NDCG@10':>14}{'epochs':>8}{'s/epoch':>9}")
        for name, r in group.items():
            spe = f"{r['s_per_epoch_wall']:.1f}" if r.get("s_per_epoch_wall") else "-"
            print(f"{name:<40}{r['valid']['ndcg']:>14.4f}{r['test']['recall']:>11.4f}{r['test']['ndcg']:>14.4f}"
                  f"{r['epochs'] or '-':>8}{spe:>9}")
        if protocol == PUBLISHED_PROTOCOL:
            for name, p in doc["published"].items():
                print(f"{'published ' + name:<54}{p['recall@10']:>11.4f}{p['ndcg@10']:>14.4f}")


def load_at_start(row: dict) -> float:
    """1-minute load average when the row started (rows before the per-row machine kept it beside it)."""
    return (row.get("load_average_start") or row["machine"]["load_average_1m_5m_15m_at_start"])[0]


def machine_label(machine: dict) -> str:
    """The CPU's name, its widest vector units, and the instruction set torch was held to (emulation env) if any."""
    label = machine.get("cpu", "?").replace("(R)", "")
    flags = set(machine.get("cpu_flags") or ())
    units = "/".join(n for n, f in (("AVX-512", "avx512f"), ("AMX", "amx_tile")) if f in flags)
    isa = (machine.get("cpu_env") or {}).get("ATEN_CPU_CAPABILITY")
    if isa:  # held below what the CPU has: name both, so the row is not read as the CPU's own speed
        label += f" ({units}), emulated {isa.upper()}" if units else f", emulated {isa.upper()}"
    return label


def markdown(doc: dict) -> str:
    """The README tables, one per protocol: each row with its protocol and configuration (SASRec options: what
    differs from the published configuration), valid NDCG@10, test Recall@10 / NDCG@10 with 95% CIs, epochs, CPU s
    an epoch, machine. The published rows (protocol `loo`, from their code) are in the `loo` table only; the
    `loo+refit` rows follow in a table of their own, so that no refit row stands beside a published figure."""
    published = {k: v for k, v in rows()["sasrec_ss256"][1].items() if k != "search_space"}
    header = [("| row | protocol | configuration | valid NDCG@10 | test Recall@10 [95% CI] | test NDCG@10 [95% CI] | "
               "epochs (best, ended by) | CPU s/epoch | machine, load |"), "|---|---|---|---|---|---|---|---|---|"]
    tables = []
    for protocol, group in by_protocol(doc).items():
        lines = list(header)
        for name, r in group.items():
            config = r["config"]
            if name.startswith("sasrec_") and name != "sasrec_ss256":
                config = {k: v for k, v in config.items() if published.get(k) != v}
            cfg = ", ".join(f"{k} {v}" for k, v in config.items() if k != "seeds")
            if config is not r["config"]:
                cfg = f"published + {cfg}"
            chosen = ", ".join(f"{k} {v}" for k, v in r["chosen"].items())
            cfg = "; ".join(x for x in (cfg, f"chosen: {chosen}" if chosen else "") if x)
            (rl, rh), (nl, nh) = r["test_ci95"]["recall"], r["test_ci95"]["ndcg"]
            recall = f"{r['test']['recall']:.4f} [{rl:.4f}, {rh:.4f}]"
            ndcg = f"{r['test']['ndcg']:.4f} [{nl:.4f}, {nh:.4f}]"
            if r.get("seeds", 1) > 1:  # the mean over seeds ± their std; the CI's basis is stated
                sd, of = r["test_std"], r.get("test_ci95_of", "each user's mean over the seeds")
                recall = f"{r['test']['recall']:.4f} ± {sd['recall']:.4f} ({r['seeds']} seeds) [{rl:.4f}, {rh:.4f}]"
                ndcg = (f"{r['test']['ndcg']:.4f} ± {sd['ndcg']:.4f} ({r['seeds']} seeds) [{nl:.4f}, {nh:.4f}]; "
                        f"CI of {of}")
            epochs = f"{r['epochs']} ({r['best_epoch']}, {r['stopped_by']})" if r["epochs"] else "-"
            if r.get("refit_of"):  # same configuration as its row, retrained on train+valid for the row's best epochs
                cfg = f"{r['refit_of']}, retrained on train+valid"
                epochs = f"{r['epochs']} (the row's best)" if r["epochs"] else "-"
            cpu = f"{r['cpu_s_per_epoch_incl_validation']:.1f}" if r.get("cpu_s_per_epoch_incl_validation") else "-"
            machine = machine_label(r.get("machine") or {})
            lines.append(f"| {name} | {protocol} | {cfg} | {r['valid']['ndcg']:.4f} | {recall} | {ndcg} | {epochs} | "
                         f"{cpu} | {machine}, {load_at_start(r):.0f} |")
        if protocol == PUBLISHED_PROTOCOL:
            for name, p in doc["published"].items():
                lines.append(f"| published: {name} | {PUBLISHED_PROTOCOL} | | | {p['recall@10']:.4f} | "
                             f"{p['ndcg@10']:.4f} | | | |")
        elif group:
            lines.insert(0, f"Protocol `{protocol}`: not comparable with the published rows "
                            f"(`{PUBLISHED_PROTOCOL}`).\n")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="sasrec_ss256,ease,item_knn", help=f"comma-separated, from {list(rows())}")
    parser.add_argument("--refit", action="store_true",
                        help="retrain each row (already run) on train+valid for its best epoch count; test only")
    parser.add_argument("--time-budget", type=float, default=0.0, help="training seconds per sequential fit")
    parser.add_argument("--patience", type=int, default=0,
                        help="validation checks without improvement before a sequential fit stops (0: the row's)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train the chosen point with N seeds; test rows are the mean, with their std")
    parser.add_argument("--markdown", action="store_true", help="print the README table from the results file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the README note)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("amazon_toys")
    data = load_toys()
    for row in args.rows.split(","):
        if row not in rows():
            raise SystemExit(f"unknown row {row!r}; choose from {list(rows())}")
        machine = machine_info()  # per row: rows run on different machines and days
        if args.refit:
            done = json.loads(RESULTS.read_text())["rows"][row]
            result, row = refit_row(row, data, done, log), f"{row}_refit"
        else:
            result = run_row(row, data, args.time_budget, args.patience, args.seeds, log)
            row = f"{row}_seeds{args.seeds}" if args.seeds > 1 else row
        result.update({"torch_threads": args.threads, "load_average_end": os.getloadavg(), "machine": machine})
        doc = save({row: result})
        log.info(f"{row}: {json.dumps({k: result[k] for k in ('valid', 'test', 'test_ci95', 'epochs')})}")
    print_table(doc)


if __name__ == "__main__":
    main()
