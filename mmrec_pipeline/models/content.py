"""Content-based: each item is a text vector; a user is the recency-weighted mean of their history's
vectors; items are ranked by cosine similarity. Vectors are the dataset's sentence embeddings when the
`text_embeddings` feature exists (config `vector`), else TF-IDF over title + description, fitted here."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from mmrec_pipeline.models.base import Recommender


@dataclasses.dataclass
class ContentConfig:
    vector: str = "sbert_text"  # a text_embeddings column; TF-IDF when absent (or set to "tfidf")
    recency_decay: float = 0.9  # weight of the k-th most recent history item = decay**k
    max_features: int = 20000


# The grid the runner tunes on validation (models/runner.py).
SEARCH_SPACE = {"recency_decay": (0.5, 0.8, 0.9, 1.0)}


def user_profiles(vectors: torch.Tensor, history: list[np.ndarray], decay: float) -> torch.Tensor:
    """Recency-weighted mean of each history's item vectors (the last item weighs 1, the one before `decay`, …;
    `decay` 1.0 = the plain mean), zeros for an empty history. One scatter-add over all histories."""
    lengths = np.array([len(h) for h in history], dtype=np.int64)
    out = torch.zeros(len(history), vectors.shape[1])
    if not lengths.sum():
        return out
    rows = torch.as_tensor(np.repeat(np.arange(len(history)), lengths))
    items = torch.as_tensor(np.concatenate(history), dtype=torch.long)
    steps_back = np.concatenate([np.arange(n)[::-1] for n in lengths])
    w = torch.as_tensor(decay ** steps_back, dtype=torch.float32)
    out.index_add_(0, rows, w[:, None] * vectors[items].float())
    total = torch.zeros(len(history)).index_add_(0, rows, w)
    return out / total.clamp(min=1e-12)[:, None]


VARIANTS = {"default": {}, "tfidf": {"vector": "tfidf"}}


class ContentBased(Recommender):
    name = "content"
    Config = ContentConfig
    variants = VARIANTS
    feature_assets = ("text_embeddings",)
    search_space = SEARCH_SPACE

    def fit(self, data, features, compute, log=None) -> dict:
        start = time.perf_counter()
        vec = features.get(self.config.vector) if features is not None else None
        if vec is not None:
            source = f"text_embeddings.{self.config.vector}"
            item_vectors = torch.from_numpy(vec)
        else:
            # imported here, not at the top: every process importing the code location would pay for it
            from sklearn.feature_extraction.text import TfidfVectorizer

            source = "tfidf"
            tfidf = TfidfVectorizer(max_features=self.config.max_features, sublinear_tf=True, stop_words="english")
            # A dense TF-IDF matrix is fine at our sizes; its dimension is bounded by max_features.
            item_vectors = torch.from_numpy(tfidf.fit_transform(data.item_text()).astype(np.float32).toarray())
        self.n_items = data.n_items
        self.item_vectors = F.normalize(item_vectors.float(), dim=1)
        self.source = source
        return {"seconds": time.perf_counter() - start, "vectors": source, "dim": int(item_vectors.shape[1])}

    @torch.no_grad()
    def score(self, users, history) -> torch.Tensor:
        profile = F.normalize(user_profiles(self.item_vectors, history, self.config.recency_decay), dim=1)
        return profile @ self.item_vectors.T

    def extra_config(self):
        return {**super().extra_config(), "source": self.source}

    def apply_extra_config(self, extra):
        super().apply_extra_config(extra)
        self.source = extra["source"]

    def state_dict(self):
        return {"item_vectors": self.item_vectors}

    def load_state_dict(self, state):
        self.item_vectors = state["item_vectors"]
