"""Benchmark vq_bart (VQ codes + BART, generate-then-retrieve): training tokens/s, decode items/s, index search.

    python benchmarks/vq_bart.py [--parts throughput,sample] [--threads 1] [--tables DIR]
    python benchmarks/vq_bart.py --parts train,decode   # only those pieces of `throughput` (no 100k HNSW build)

- `throughput`: the demo profile's BART (scratch, 1+1 layers, d_model 64, a 1,200-item catalog's vocabulary) on
  synthetic batches of 64 examples: training tokens/s for the input each variant builds (5 items of text; 20
  items; 5 items with 4x4 = 16 image codes each; and the paper's unpooled 256 codes per item, which is what
  "exhausts the input" costs), greedy and 4-beam decode items/s, sentence-encoder query items/s, and FAISS search
  items/s for an exact index (1,200 items) and HNSW (100,000 random items) with its recall@10 against exact.
- `sample`: the three variants of the demo profile as `make demo` runs them (fit with its validation, the
  runner's valid and test rankings, the report's BERTScore part) on prepared sample tables in `--tables`
  (items.parquet, split.parquet, vq.parquet and optionally text.parquet, as the pipeline's `items`, `split`,
  `vq_codes`, `text_embeddings`), wall and CPU seconds per step and variant, valid and test NDCG@10.

Torch uses `--threads` threads (default 1, as the demo profile). The machine info (CPU model and flags, load
average) comes from benchmarks/machine.py. Results: `benchmarks/results/vq_bart.json` (parts merge).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vq_bart.json"


def demo_model(history: int, use_image: bool, image_grid: int, n_items: int = 1200, n_codes: int = 512):
    """A demo-profile VQBart with a synthetic catalog (random token rows), built without the dataset."""
    import torch

    from mmrec_pipeline.models.vq_bart import Vocabulary, VQBart, build_bart

    model = VQBart(history=history, use_image=use_image, image_grid=image_grid)
    cfg = model.config
    rng = np.random.default_rng(0)
    model.vocab = Vocabulary(np.arange(200), n_codes=n_codes if use_image else 0)  # ~ the sample's 211 tokens
    model.n_items = n_items
    texts = rng.integers(5, 205, size=(n_items, cfg.max_item_tokens))
    codes = rng.integers(0, n_codes, size=(n_items, image_grid ** 2)) if use_image else None
    rows = [list(t) + ((model.vocab.image_offset + codes[i]).tolist() if use_image else []) + [3]
            for i, t in enumerate(texts)]
    model.item_tokens = torch.zeros(n_items + 1, len(rows[0]), dtype=torch.long)
    model.item_tokens[:n_items] = torch.tensor(rows)
    model.target_tokens = torch.cat([torch.tensor(texts[:, :cfg.max_target_tokens]),
                                     torch.full((n_items, 1), 2)], dim=1)
    model.bart = build_bart(cfg, model.vocab, "", load_weights=True)
    return model, rng


def train_throughput(history: int, use_image: bool, image_grid: int, steps: int = 8) -> dict:
    import torch

    model, rng = demo_model(history, use_image, image_grid)
    opt = torch.optim.AdamW(model.bart.parameters(), lr=1e-3)
    hist = [rng.integers(0, model.n_items, history) for _ in range(64)]
    x, mask = model.encoder_inputs(hist)
    labels = model.target_tokens[torch.as_tensor(rng.integers(0, model.n_items, 64))]
    model.bart.train()

    def step():
        loss = model.bart(input_ids=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = (int(mask.sum()) + labels.numel()) * steps
    return {"history": history, "image_tokens_per_item": image_grid ** 2 if use_image else 0,
            "input_tokens_per_example": int(mask.sum()) / 64, "examples_per_second": 64 * steps / seconds,
            "tokens_per_second": tokens / seconds, "tokens_per_cpu_second": tokens / cpu,
            "parameters": sum(p.numel() for p in model.bart.parameters())}


def decode_throughput(num_beams: int, n: int = 256) -> dict:
    import dataclasses

    model, rng = demo_model(5, True, 4)
    model.config = dataclasses.replace(model.config, decode="beam" if num_beams > 1 else "greedy",
                                       num_beams=num_beams)
    model.bart.eval()
    hist = [rng.integers(0, model.n_items, 5) for _ in range(n)]
    start, cpu = time.perf_counter(), time.process_time()
    model.generate(hist)  # an untrained model runs to max_target_tokens: the worst case
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"num_beams": num_beams, "items": n, "items_per_second": n / seconds, "items_per_cpu_second": n / cpu,
            "max_new_tokens": model.config.max_target_tokens + 1}


def index_throughput() -> dict:
    from mmrec_pipeline.models.vq_bart import VectorIndex, embed_texts

    rng = np.random.default_rng(0)
    texts = [f"Brand {i % 40} item {i}. category {i % 14}. colour {i % 10}, cotton, mid" for i in range(512)]
    embed_texts(texts[:8])  # load the encoder outside the timing
    start = time.perf_counter()
    embed_texts(texts)
    out = {"sentence_encoder_items_per_second": len(texts) / (time.perf_counter() - start)}
    for name, n in (("flat_1200", 1200), ("hnsw_100000", 100_000)):
        catalog = rng.normal(size=(n, 384)).astype(np.float32)
        catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
        start = time.perf_counter()
        index = VectorIndex(catalog, kind="flat" if n == 1200 else "hnsw")
        build = time.perf_counter() - start
        # a catalog vector plus noise of norm ~0.5: the query has true near neighbours (noise of 0.5 per dimension
        # would swamp the signal and make every neighbour equally far)
        q = catalog[rng.choice(n, 512, replace=False)] + 0.5 / 384**0.5 * rng.normal(size=(512, 384)).astype(np.float32)
        start = time.perf_counter()
        _, found = index.search(q, 10)
        search = time.perf_counter() - start
        exact = np.argsort(-(q @ catalog.T), axis=1)[:, :10]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
        out[name] = {"build_seconds": build, "queries_per_second": 512 / search, "recall@10_vs_exact": recall}
    return out


def part_throughput(pieces: tuple[str, ...] = ("train", "decode", "retrieval")) -> dict:
    """`throughput` runs all three pieces; `train` or `decode` alone replaces only that piece (retrieval's 100k
    HNSW build takes many minutes on a shared 2-core machine)."""
    run = {"train": lambda: [train_throughput(5, False, 4), train_throughput(20, False, 4),
                             train_throughput(5, True, 4), train_throughput(5, True, 16, steps=2)],
           "decode": lambda: [decode_throughput(1), decode_throughput(4)], "retrieval": index_throughput}
    return {piece: run[piece]() for piece in pieces}


def part_sample(tables: Path) -> dict:
    """Each variant as `make demo` runs it: fit (with its per-epoch validation), the runner's full validation and
    test rankings (`evaluate_model`, sampled=None as the runner's valid stage), and the report's part
    (`generation_section` for one variant: reload, generate for `REPORT_USERS` test users, two BERTScores); CPU
    and wall seconds."""
    import tempfile

    import polars as pl

    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.text import item_texts
    from mmrec_pipeline.evaluation.facts import REPORT_USERS, top_items
    from mmrec_pipeline.evaluation.protocols import evaluate_model, subsample
    from mmrec_pipeline.evaluation.sections.vq_bart import bertscore
    from mmrec_pipeline.models.base import ItemFeatures
    from mmrec_pipeline.models.runner import selection_value
    from mmrec_pipeline.models.vq_bart import VARIANTS, VQBart

    data = RecDataset.from_tables("sample", pl.read_parquet(tables / "split.parquet"),
                                  pl.read_parquet(tables / "items.parquet"))
    feats = ItemFeatures.from_table(data, pl.read_parquet(tables / "vq.parquet"))
    text = tables / "text.parquet"
    if text.exists():
        feats = feats.merge(ItemFeatures.from_table(data, pl.read_parquet(text)))
    texts, test_seqs = item_texts(data.items), data.sequences("test")
    out = {}

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def since(start: tuple[float, float]) -> dict:
        return {"wall": round(time.perf_counter() - start[0], 1), "cpu": round(time.process_time() - start[1], 1)}

    for variant, overrides in VARIANTS.items():
        load, total = os.getloadavg()[0], clock()
        start = clock()
        model = VQBart(**overrides)
        report = model.fit(data, feats, Compute(device="cpu"))
        seconds = {"fit": since(start)}
        start = clock()
        valid, _ = evaluate_model(model, data, "vq_bart", variant, sampled=None, stage="valid")
        seconds["valid_ranking"] = since(start)
        start = clock()
        table, _ = evaluate_model(model, data, "vq_bart", variant, item_vectors=feats.get("sbert_text"))
        seconds["test_ranking"] = since(start)
        start = clock()
        with tempfile.TemporaryDirectory() as folder:  # the report reloads the checkpoint
            loaded = VQBart.load(model.save(Path(folder) / variant))
            inputs = subsample(data.eval_inputs("test"), REPORT_USERS, 0)
            refs = [texts[test_seqs[u][0]] for u in inputs.users]
            generated = bertscore(loaded.generate(inputs.history), refs)["F1"]
            top1 = bertscore([texts[t[0]] for t in top_items(loaded, inputs, 5)], refs)["F1"]
        seconds["report_section"] = since(start)
        seconds["total"] = since(total)
        full = {(r["metric"], r["k"]): r["value"] for r in table.filter(pl.col("protocol") == data.protocol)
                .iter_rows(named=True)}
        out[variant] = {"valid_ndcg@10": selection_value(valid), "test_ndcg@10": full[("ndcg", 10)],
                        "test_recall@20": full[("recall", 20)], "test_mrr@20": full[("mrr", 20)],
                        "users": full[("users_evaluated", None)], "bertscore_f1_generated": generated,
                        "bertscore_f1_top1": top1, "seconds": seconds, "load_average_1m_at_start": load,
                        **{k: report[k] for k in ("epochs", "best_epoch", "best_valid_ndcg@10",
                                                  "target_tokens_per_second", "image_tokens_per_item", "vocabulary",
                                                  "trainable_parameters")}}
        print(variant, json.dumps(out[variant]), flush=True)
    out["all_variants_cpu_seconds"] = round(sum(v["seconds"]["total"]["cpu"] for v in out.values()), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="throughput")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tables", type=Path, default=ROOT / "benchmarks" / ".work" / "vq_bart")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = machine_info()
    for part in args.parts.split(","):
        start, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
        if part in ("train", "decode"):  # one piece of `throughput`, merged into it
            piece = part_throughput((part,))
            piece[f"{part}_load_average_at_start"] = load
            results["throughput"] = {**results.get("throughput", {}), **piece}
            print(part, json.dumps(piece, indent=1), flush=True)
            continue
        results[part] = part_throughput() if part == "throughput" else part_sample(args.tables)
        results[part]["seconds"] = time.perf_counter() - start
        results[part]["load_average_at_start"] = load
        results[part]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(part, json.dumps(results[part], indent=1), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
