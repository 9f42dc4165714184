"""Validation NDCG@10 of every model that trains through `models/training.py`'s `Trainer`, on `sample`.

    python benchmarks/trainer_parity.py --label after [--models bpr_mf,sasrec,...] [--threads 1]

Run on a code state before and after a change to the training loop: the two result files side by side say whether
model quality moved beyond seed noise. Protocol: the generated `sample` store (5-core, temporal split), each model
with its default config (mm_llmrec: demo profile, `concat`; lvlm_retrieval: the learned fusions on title +
EfficientNet-Lite0; vq_bart: demo `small_history`; mmrec_dlrm: `raw-sqrt`, one dropout 0.3), seed 0, fitted on
train and early-stopped on validation; the figure is the fit report's best validation NDCG@10 (the shared
`Validator`: full catalog, at most 3,000 validation users; vq_bart its 300) except mmrec_dlrm (valid AUC on
sample, which has ratings). Features (image/text embeddings, raw-review vectors) come from the lake's feature
cache, computed on first use. CPU seconds are process CPU time of the fit (the machine is shared).
Results: `benchmarks/results/trainer_parity_<label>.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from machine import machine_info

NO_FEATURES = ("bpr_mf", "gru4rec", "sasrec", "bert4rec", "deepconn")  # read interactions (and reviews) only
MODELS = ("bpr_mf", "vbpr", "gru4rec", "sasrec", "bert4rec", "deepconn", "mm_llmrec", "lvlm_gating_fusion",
          "lvlm_attention_fusion", "vq_bart", "mmrec_dlrm")


def sample(with_features: bool):
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.data.dataset import RecDataset
    from mmrec_pipeline.data.filtering import user_core
    from mmrec_pipeline.data.schema import validate
    from mmrec_pipeline.data.splits import make_split
    from mmrec_pipeline.data.synthetic import read
    from mmrec_pipeline.features.image import image_embeddings
    from mmrec_pipeline.features.summaries import raw_review_vectors
    from mmrec_pipeline.features.text import text_embeddings
    from mmrec_pipeline.models.base import ItemFeatures, item_features
    from mmrec_pipeline.storage import Lake
    from mmrec_pipeline.weights import ModelSources

    tables = validate(read(Lake().sample_raw("sample"), {"version": 1, "seed": 7}), "sample")
    split = make_split(user_core(tables.interactions, 5), "temporal")
    data = RecDataset.from_tables("sample", split, tables.items)
    if not with_features:
        return data, ItemFeatures()
    compute, sources, cache = Compute(device="cpu", batch_size=64), ModelSources(), Lake().feature_cache()
    image, _ = image_embeddings(tables.items, sources, compute, cache, models=("efficientnet_lite0",))
    text, _ = text_embeddings(tables.items, sources, compute, cache, gpt2=False)
    raw, _ = raw_review_vectors(tables.items, split, sources, compute, cache, max_reviews=20)
    return data, item_features(data, {"image_embeddings": image, "text_embeddings": text, "review_summaries": raw})


def build(name: str):
    from mmrec_pipeline.models.bert4rec import BERT4Rec
    from mmrec_pipeline.models.bpr_mf import BPRMF
    from mmrec_pipeline.models.deepconn import DeepCoNN
    from mmrec_pipeline.models.gru4rec import GRU4Rec
    from mmrec_pipeline.models.lvlm_retrieval import LVLMConfig, LVLMRetrieval
    from mmrec_pipeline.models.mm_llmrec import MMLLMRec, MMLLMRecConfig
    from mmrec_pipeline.models.mmrec_dlrm import MMRecDLRM, MMRecDLRMConfig
    from mmrec_pipeline.models.sasrec import SASRec
    from mmrec_pipeline.models.vbpr import VBPR
    from mmrec_pipeline.models.vq_bart import VQBart, VQBartConfig

    if name.startswith("lvlm_"):
        return LVLMRetrieval(LVLMConfig(strategy=name.removeprefix("lvlm_")))
    return {"bpr_mf": BPRMF, "vbpr": VBPR, "gru4rec": GRU4Rec, "sasrec": SASRec, "bert4rec": BERT4Rec,
            "deepconn": DeepCoNN, "mm_llmrec": lambda: MMLLMRec(MMLLMRecConfig(variant="concat")),
            "vq_bart": lambda: VQBart(VQBartConfig(history=5)),
            "mmrec_dlrm": lambda: MMRecDLRM(MMRecDLRMConfig(modalities="raw", loss="sqrt", dropouts="0.3"))}[name]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.storage import Lake

    names = args.models.split(",")
    data, features = sample(with_features=not set(names) <= set(NO_FEATURES))
    out_path = ROOT / "benchmarks" / "results" / f"trainer_parity_{args.label}.json"
    results = {"machine": machine_info(), "protocol": __doc__.split("\n\n")[1], "models": {}}
    for name in names:
        model = build(name)
        model.feature_cache = Lake().feature_cache()  # vq_bart's catalog sentence vectors
        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = model.fit(data, features, Compute(device="cpu"))
        curve = report.get("curve") or []
        best = report.get("best_valid_ndcg@10", report.get("valid_ndcg@10"))
        if best is None:  # a loop that reported only its curve
            best = max(r["valid_ndcg@10"] for r in curve if "valid_ndcg@10" in r)
        if name == "mmrec_dlrm":
            best = report["dropout_grid"][0]["valid"]
        results["models"][name] = {"valid": round(float(best), 4), "epochs": report.get("epochs", len(curve)),
                                   "best_epoch": report.get("best_epoch"),
                                   "cpu_seconds": round(time.process_time() - cpu0, 1),
                                   "wall_seconds": round(time.perf_counter() - wall0, 1)}
        print(name, results["models"][name], flush=True)
        out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
