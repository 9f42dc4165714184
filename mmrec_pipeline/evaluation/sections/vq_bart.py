"""vq_bart's report section: the paper's metric (BERTScore of the generated next-item text) beside ours.

Reads each variant's report facts (generated texts, top items), written when the model assets trained, and the
dataset's VQ-VAE report; never a checkpoint.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import polars as pl

from mmrec_pipeline.data.text import item_texts
from mmrec_pipeline.evaluation.audit import validation_best
from mmrec_pipeline.evaluation.facts import REPORT_USERS, read_report_facts
from mmrec_pipeline.evaluation.protocols import subsample
from mmrec_pipeline.evaluation.report import (
    EXAMPLES_NOTE,
    ReportInputs,
    Section,
    full_ranking,
    user_example,
)
from mmrec_pipeline.storage import DatasetView, read_json_file, to_path
from mmrec_pipeline.weights import ModelSources

BERTSCORE_LAYERS = 6  # all-MiniLM-L6-v2 has 6 layers; bert-score needs the layer named for an unlisted encoder
BASELINES = ("gru4rec", "popularity")


@functools.cache
def bert_scorer():
    """BERTScore with the sentence encoder of `text_embeddings` (packaged all-MiniLM-L6-v2, last layer, no idf,
    no baseline rescaling). The paper does not name its encoder; bert-score's English default is roberta-large."""
    from bert_score import BERTScorer

    return BERTScorer(model_type=ModelSources().resolve("sbert"), num_layers=BERTSCORE_LAYERS, device="cpu",
                      use_fast_tokenizer=True)


def bertscore(candidates: list[str], references: list[str]) -> dict[str, float]:
    """Mean BERTScore precision, recall and F1 of candidate texts against their references; an empty candidate
    scores 0 (as bert-score itself defines it; its tokenizer call fails on empty text with this transformers)."""
    keep = [i for i, (c, r) in enumerate(zip(candidates, references, strict=True)) if c.strip() and r.strip()]
    sums = np.zeros(3)
    if keep:
        p, r, f = bert_scorer().score([candidates[i] for i in keep], [references[i] for i in keep], batch_size=64)
        sums = np.array([p.sum().item(), r.sum().item(), f.sum().item()])
    mean = sums / max(len(candidates), 1)
    return {"P": float(mean[0]), "R": float(mean[1]), "F1": float(mean[2])}


def generation_section(metrics: pl.DataFrame, data, artifacts: DatasetView, vq_report: Path | None = None,
                       max_users: int = REPORT_USERS, n_examples: int = 3, seed: int = 0) -> Section:
    """BERTScore of the generated next-item text next to the ranking metrics, for every vq_bart variant and the
    GRU4Rec / popularity baselines (for those, and as a second column for vq_bart, the BERTScore of the top-1
    recommended item's text), VQ tokenizer quality, and qualitative examples. Reads each variant's report facts
    (generated texts, top items: written when the assets trained), never a checkpoint."""
    inputs = subsample(data.eval_inputs("test"), max_users, seed)
    texts = item_texts(data.items)
    test_seqs = data.sequences("test")
    # The true next item: the first test-period purchase the protocol evaluates (a repeat it excludes is skipped).
    refs = [texts[next(i for i in test_seqs[u] if i in set(rel.tolist()))]
            for u, rel in zip(inputs.users, inputs.relevant)]
    full = full_ranking(metrics)

    def ranking(model: str, variant: str) -> dict:
        t = full.filter((pl.col("model") == model) & (pl.col("variant") == variant))
        get = {(r["metric"], r["k"]): r["value"] for r in t.iter_rows(named=True)}
        return {"NDCG@10": get.get(("ndcg", 10)), "Recall@20": get.get(("recall", 20)),
                "MRR@20": get.get(("mrr", 20))}

    rows, examples = [], None
    variants = full.filter(pl.col("model") == "vq_bart")["variant"].unique(maintain_order=True).to_list()
    users = [str(int(u)) for u in inputs.users]
    for variant in variants:
        facts = read_report_facts(artifacts, "vq_bart", variant)
        generated = [facts["generated"][u] for u in users]
        top = [facts["top"][u] for u in users]
        gen, top1 = bertscore(generated, refs), bertscore([texts[t[0]] for t in top], refs)
        rows.append({"model": f"vq_bart/{variant}", "history": facts["history"],
                     "image tokens/item": facts["image_tokens_per_item"],
                     "BERTScore F1 (generated)": gen["F1"], "BERTScore P": gen["P"], "BERTScore R": gen["R"],
                     "BERTScore F1 (top-1 item)": top1["F1"], **ranking("vq_bart", variant)})
        if examples is None or variant == "image":
            examples = (variant, generated, top)
    for name in BASELINES:
        t = full.filter((pl.col("model") == name) & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
        if t.height == 0:
            continue
        variant = validation_best(metrics, name, data.protocol)  # chosen on validation, never on test
        top = [read_report_facts(artifacts, name, variant)["top"][u] for u in users]
        rows.append({"model": f"{name}/{variant}", "history": None, "image tokens/item": None,
                     "BERTScore F1 (generated)": None, "BERTScore P": None, "BERTScore R": None,
                     "BERTScore F1 (top-1 item)": bertscore([texts[t[0]] for t in top], refs)["F1"],
                     **ranking(name, variant)})
    table = pl.DataFrame(rows, infer_schema_length=None)

    tokenizer = "a pretrained VQGAN (MMREC_MODEL_VQGAN)"
    if vq_report is not None and to_path(vq_report).exists():
        q = read_json_file(vq_report)
        tokenizer = (f"the dataset's VQ-VAE ({q['config']['image_size']} px, codebook {q['config']['codebook_size']}): "
                     f"held-out PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.3f} over {q['holdout_images']} images")
    note = (f"Protocol: {len(inputs.users)} test users (seeded subsample of the `{data.protocol}` test users); the "
            f"reference text is each user's first evaluated test-period item ('title. category. attributes'); "
            f"baselines: each one's variant best on validation. BERTScore = "
            f"bert-score 0.3.13 with all-MiniLM-L6-v2 (layer {BERTSCORE_LAYERS}, no idf, no rescaling); the paper "
            f"does not name its encoder (bert-score's English default is roberta-large), so values are not "
            f"comparable to its table. Ranking columns: the shared evaluator, full catalog, all test users. Image "
            f"codes: {tokenizer}; LPIPS is not reported (the `lpips` package's VGG/AlexNet weights cannot be "
            f"downloaded here). A high text BERTScore with a low NDCG is the paper's audit point: the generated text "
            f"resembles the next item without identifying it.")
    section = Section("vq_bart: generated text (BERTScore) vs ranking", note, [table])
    if examples is not None:
        variant, generated, top = examples
        pick = sorted(np.random.default_rng(seed).choice(len(inputs.users), min(n_examples, len(inputs.users)),
                                                         replace=False))
        section.examples = [user_example(data, inputs.users[i], inputs.history[i], top[i],
                                         set(inputs.relevant[i].tolist()), generated[i]) for i in pick]
        section.examples_note = f"vq_bart/{variant}: the generated text for the next item; " + EXAMPLES_NOTE
    return section


def section(inputs: ReportInputs) -> Section:
    """BERTScore beside NDCG, next to GRU4Rec and popularity, with the VQ tokenizer's quality."""
    return generation_section(inputs.metrics, inputs.data, inputs.artifacts, inputs.artifacts.vq_vae_report)
