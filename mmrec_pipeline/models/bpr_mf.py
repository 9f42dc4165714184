"""BPR-MF (Rendle et al. 2009): user and item factors plus an item bias, x_ui = b_i + <p_u, q_i>, trained
with the pairwise BPR loss on (user, bought item, uniformly sampled other item) triples; early-stopped on
validation NDCG@10.

At evaluation time a user's history runs up to the evaluated stage, past what the factors saw in training
(and a quarter of the sample's test users have no training rows at all). By default (`user_vector="history"`)
a user is therefore folded in as the mean factor of their history items; `user_vector="factor"` gives the
classic trained user factor (fold-in only for users without training rows). The runner chooses between the two
on validation (`search_space`)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.models.training import EarlyStopping, Validator, seed_everything


@dataclasses.dataclass
class BPRConfig:
    dim: int = 64
    epochs: int = 60
    batch_size: int = 1024
    lr: float = 0.01
    weight_decay: float = 1e-3
    user_vector: str = "history"  # history | factor (see the module docstring)
    patience: int = 4
    eval_every: int = 2
    seed: int = 0


# The grid the runner tunes on validation (models/runner.py). Two points only: each is a full training run.
SEARCH_SPACE = {"user_vector": ("history", "factor")}


class BPRMF(Recommender):
    name = "bpr_mf"
    Config = BPRConfig
    search_space = SEARCH_SPACE

    def fit(self, data, features, compute, log=None) -> dict:
        cfg = self.config
        seed_everything(cfg.seed)
        start = time.perf_counter()
        self.n_items = data.n_items
        side = self.init_side(data, features)  # VBPR's image projection; nothing for BPR-MF
        self.user_emb = torch.nn.Embedding(data.n_users, self.user_dim())
        self.item_emb = torch.nn.Embedding(data.n_items, cfg.dim)
        self.item_bias = torch.zeros(data.n_items, requires_grad=True)  # x_ui = b_i + <p_u, q_i>
        torch.nn.init.normal_(self.user_emb.weight, std=0.1)
        torch.nn.init.normal_(self.item_emb.weight, std=0.1)
        self.trained_user = torch.zeros(data.n_users, dtype=torch.bool)
        users = torch.as_tensor(data.train["user_idx"].to_numpy().copy())
        items = torch.as_tensor(data.train["item_idx"].to_numpy().copy())
        self.trained_user[users] = True
        opt = torch.optim.Adam([self.user_emb.weight, self.item_emb.weight, self.item_bias, *side], lr=cfg.lr)
        validate, stopper, curve = Validator(data), EarlyStopping(cfg.patience), []
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(1, cfg.epochs + 1):
            perm = torch.randperm(len(users), generator=gen)
            total = 0.0
            for lo in range(0, len(perm), cfg.batch_size):
                b = perm[lo:lo + cfg.batch_size]
                u, i = users[b], items[b]
                j = torch.randint(0, data.n_items, (len(b),), generator=gen)
                ue, (ie, bi), (je, bj) = self.user_emb(u), self.item_rows(i), self.item_rows(j)
                diff = (ue * (ie - je)).sum(-1) + bi - bj
                loss = -F.logsigmoid(diff).mean() + self.side_penalty()
                loss = loss + cfg.weight_decay * (ue.pow(2).sum() + ie.pow(2).sum() + je.pow(2).sum()) / len(b)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            row = {"epoch": epoch, "loss": total / len(perm)}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                row["valid_ndcg@10"] = validate(self.score)
                if log:
                    log.info(f"{self.name} epoch {epoch}: loss {row['loss']:.4f}, valid NDCG@10 {row['valid_ndcg@10']:.4f}")
                if stopper.step(row["valid_ndcg@10"], epoch, self.state_dict()):
                    curve.append(row)
                    break
            curve.append(row)
        if stopper.best_state is not None:
            self.load_state_dict(stopper.best_state)
        self.finish_side()
        return {"seconds": time.perf_counter() - start, "epochs": len(curve), "best_epoch": stopper.best_epoch,
                "curve": curve}

    # --- what VBPR changes: the item side (vectors and bias) and extra parameters -----------------------

    def user_dim(self) -> int:
        return self.config.dim

    def init_side(self, data, features) -> list[torch.Tensor]:
        """Extra trainable tensors beside the factors (none for BPR-MF)."""
        return []

    def side_penalty(self) -> torch.Tensor | float:
        return 0.0

    def finish_side(self) -> None:
        """After training: freeze whatever scoring needs from the extra parameters."""

    def item_rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, bias) of the items `idx`, as the user vector sees them."""
        return self.item_emb(idx), self.item_bias[idx]

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.item_emb.weight, self.item_bias

    @torch.no_grad()
    def score(self, users, history) -> torch.Tensor:
        items, bias = self.item_table()
        users = torch.as_tensor(users, dtype=torch.long)
        u = self.user_emb.weight[users].clone()
        lengths = torch.as_tensor([len(h) for h in history], dtype=torch.long)
        fold = lengths > 0
        if self.config.user_vector != "history":
            fold &= ~self.trained_user[users]
        if bool(fold.any()):  # the mean item vector of the history, for all users of the batch at once
            flat = torch.as_tensor(np.concatenate(history), dtype=torch.long)
            rows = torch.repeat_interleave(torch.arange(len(history)), lengths)
            sums = torch.zeros(len(history), items.shape[1], dtype=items.dtype).index_add_(0, rows, items[flat])
            u[fold] = sums[fold] / lengths[fold, None].to(items.dtype)
        return u @ items.T + bias.detach()

    def state_dict(self):
        return {"user": self.user_emb.weight.data, "item": self.item_emb.weight.data,
                "item_bias": self.item_bias.data, "trained_user": self.trained_user}

    def load_state_dict(self, state):
        self.user_emb = torch.nn.Embedding.from_pretrained(state["user"].clone(), freeze=False)
        self.item_emb = torch.nn.Embedding.from_pretrained(state["item"].clone(), freeze=False)
        self.item_bias = state["item_bias"].clone().requires_grad_(True)
        self.trained_user = state["trained_user"].clone()
