"""Item-kNN (Sarwar et al. 2001): cosine similarity between item columns of the user-item matrix, shrunk
toward zero for items with little support, truncated to each item's `neighbours` most similar items.
A user's score for item j is the sum of similarities between j and the items in their history."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.sparse as sp
import torch

from mmrec_pipeline.models.base import Recommender, history_csr


@dataclasses.dataclass
class ItemKNNConfig:
    neighbours: int = 100
    shrink: float = 10.0
    chunk: int = 1024  # items per block when computing similarities: memory ~ 2 x chunk x n_items float32


# The grid the runner tunes on validation (models/runner.py).
SEARCH_SPACE = {"neighbours": (20, 50, 100, 200), "shrink": (0.0, 10.0, 50.0)}


class ItemKNN(Recommender):
    name = "item_knn"
    Config = ItemKNNConfig
    search_space = SEARCH_SPACE

    def fit(self, data, features, compute, log=None) -> dict:
        start = time.perf_counter()
        x = data.train_matrix().tocsc().astype(np.float32)
        norms = torch.from_numpy(np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()).astype(np.float32))
        xt = x.T.tocsr()
        k = min(self.config.neighbours, data.n_items - 1)
        idx = np.zeros((data.n_items, k), dtype=np.int64)
        val = np.zeros((data.n_items, k), dtype=np.float32)
        for lo in range(0, data.n_items, self.config.chunk):
            hi = min(lo + self.config.chunk, data.n_items)
            sim = torch.from_numpy((xt[lo:hi] @ x).toarray())  # co-occurrence counts [chunk, n_items]
            sim /= torch.outer(norms[lo:hi], norms).add_(self.config.shrink + 1e-9)  # float32, in place
            sim[torch.arange(hi - lo), torch.arange(lo, hi)] = 0.0  # an item is not its own neighbour
            top = torch.topk(sim, k, dim=1)
            idx[lo:hi], val[lo:hi] = top.indices.numpy(), top.values.numpy()
        self.n_items = data.n_items
        self.load_state_dict({"neighbour_idx": torch.from_numpy(idx), "neighbour_sim": torch.from_numpy(val)})
        return {"seconds": time.perf_counter() - start, "neighbours": k}

    def _similarity(self) -> sp.csr_matrix:
        """Sparse [n_items, n_items] similarity: row i holds item i's neighbours j and sim(i, j)."""
        n, k = self.neighbour_idx.shape
        return sp.csr_matrix((self.neighbour_sim.numpy().reshape(-1), self.neighbour_idx.numpy().reshape(-1),
                              np.arange(0, n * k + 1, k)), shape=(n, n))

    def score(self, users, history) -> torch.Tensor:
        if self._sim is None:
            self._sim = self._similarity()
        # score[u, j] = sum over history i of sim(i, j). Sparse x sparse costs |history| x neighbours per user;
        # only the batch's [users, n_items] result is dense.
        return torch.from_numpy((history_csr(history, self._sim.shape[0]) @ self._sim).toarray())

    def state_dict(self):
        return {"neighbour_idx": self.neighbour_idx, "neighbour_sim": self.neighbour_sim}

    def load_state_dict(self, state):
        self.neighbour_idx, self.neighbour_sim = state["neighbour_idx"], state["neighbour_sim"]
        self._sim = None
