"""EASE (Steck 2019): a closed-form item-item linear autoencoder.
B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹ and diag(B) = 0; scores = x_u B.
Only items seen in training enter the inversion (others score 0), so memory is (train items)²."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from mmrec_pipeline.models.base import Recommender, history_matrix


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
            raise ValueError(f"EASE would invert a {len(active)}×{len(active)} matrix (more than max_items="
                             f"{self.config.max_items}); raise ease.max_items for this dataset if memory allows")
        xa = torch.from_numpy(x[:, active].toarray()).double()
        g = xa.T @ xa + self.config.l2 * torch.eye(len(active), dtype=torch.float64)
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
