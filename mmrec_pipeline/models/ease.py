"""EASE (Steck 2019): a closed-form item-item linear autoencoder.
B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹ and diag(B) = 0; scores = x_u B.
Only items seen in training enter the inversion (others score 0), so memory is (train items)²: a catalog of more
than `max_items` trained items is refused with a message (105k H&M articles would need a 44 GB Gram matrix).
The Gram matrix XᵀX is built from the sparse users × items matrix, never from a dense copy of it."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from mmrec_pipeline.models.base import Recommender, history_matrix
from mmrec_pipeline.registry import registry_name


@dataclasses.dataclass
class EASEConfig:
    l2: float = 200.0
    max_items: int = 30000  # (train items)² float32 must fit in memory


# The grid the runner tunes on validation (models/runner.py).
SEARCH_SPACE = {"l2": (50.0, 200.0, 500.0, 1000.0)}


class EASE(Recommender):
    name = "ease"
    Config = EASEConfig
    search_space = SEARCH_SPACE

    def fit(self, data, features, compute, log=None) -> dict:
        start = time.perf_counter()
        x = data.train_matrix()
        active = np.flatnonzero(np.asarray(x.sum(axis=0)).ravel() > 0)
        if len(active) > self.config.max_items:
            gb = len(active) ** 2 * 8 / 2**30
            raise ValueError(f"EASE would invert a {len(active)}×{len(active)} matrix ({gb:.0f} GB in float64), more "
                             f"than max_items={self.config.max_items}; raise ease.max_items for this dataset in "
                             f"{registry_name()} (models: {{ease: {{max_items: N}}}}) if memory allows, or leave EASE out")
        xa = x[:, active].astype(np.float64)
        g = torch.from_numpy((xa.T @ xa).toarray())  # sparse product: no dense users × items copy
        g.diagonal().add_(self.config.l2)
        p = torch.linalg.inv(g)
        b = -p / torch.diag(p)
        b.fill_diagonal_(0.0)
        self.n_items = data.n_items
        self.active, self.weights = torch.from_numpy(active), b.float()
        return {"seconds": time.perf_counter() - start, "active_items": len(active)}

    def score(self, users, history) -> torch.Tensor:
        h = history_matrix(history, self.n_items)[:, self.active]
        out = torch.zeros(len(history), self.n_items)
        out[:, self.active] = h @ self.weights
        return out

    def state_dict(self):
        return {"active": self.active, "weights": self.weights}

    def load_state_dict(self, state):
        self.active, self.weights = state["active"], state["weights"]
