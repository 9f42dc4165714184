"""Hybrid: BPR-MF blended with the content model. Each model's scores are standardised per user, then
mixed as alpha·MF + (1 − alpha)·content with alpha chosen on validation NDCG@10."""

from __future__ import annotations

import dataclasses
import time

import torch

from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.models.bpr_mf import BPRMF, BPRConfig
from mmrec_pipeline.models.content import ContentBased, ContentConfig
from mmrec_pipeline.models.training import Validator


@dataclasses.dataclass
class HybridConfig:
    alphas: tuple = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    alpha: float = 0.5  # set by fit
    mf_dim: int = 64
    mf_epochs: int = 60
    content_vector: str = "sbert_text"
    seed: int = 0


def standardise(scores: torch.Tensor) -> torch.Tensor:
    return (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-9)


class Hybrid(Recommender):
    name = "hybrid"
    Config = HybridConfig
    feature_assets = ("text_embeddings",)

    def _parts(self):
        c = self.config
        return BPRMF(BPRConfig(dim=c.mf_dim, epochs=c.mf_epochs, seed=c.seed)), ContentBased(
            ContentConfig(vector=c.content_vector))

    def fit(self, data, features, compute, log=None) -> dict:
        start = time.perf_counter()
        self.mf, self.content = self._parts()
        mf_report = self.mf.fit(data, features, compute, log)
        content_report = self.content.fit(data, features, compute, log)
        self.n_items = data.n_items
        validate, tried = Validator(data), {}
        for alpha in self.config.alphas:
            self.config = dataclasses.replace(self.config, alpha=alpha)
            tried[alpha] = validate(self.score)
        best = max(tried, key=lambda a: (tried[a], -abs(a - 0.5)))
        self.config = dataclasses.replace(self.config, alpha=best)
        if log:
            log.info(f"hybrid: validation NDCG@10 by alpha {tried}; chose alpha={best}")
        return {"seconds": time.perf_counter() - start, "alpha": best, "valid_ndcg@10_by_alpha": tried,
                "mf": {k: v for k, v in mf_report.items() if k != "curve"}, "content": content_report,
                "curve": mf_report.get("curve", [])}

    @torch.no_grad()
    def score(self, users, history) -> torch.Tensor:
        a = self.config.alpha
        return a * standardise(self.mf.score(users, history)) + (1 - a) * standardise(
            self.content.score(users, history))

    def extra_config(self):
        return {**super().extra_config(), "content": self.content.extra_config()}

    def apply_extra_config(self, extra):
        super().apply_extra_config(extra)
        self.mf, self.content = self._parts()
        self.mf.apply_extra_config({"n_items": extra["n_items"]})
        self.content.apply_extra_config(extra["content"])

    def state_dict(self):
        return {**{f"mf.{k}": v for k, v in self.mf.state_dict().items()},
                **{f"content.{k}": v for k, v in self.content.state_dict().items()}}

    def load_state_dict(self, state):
        self.mf.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("mf.")})
        self.content.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("content.")})
