"""BPR-MF (Rendle et al. 2009): user and item factors plus an item bias, x_ui = b_i + <p_u, q_i>, trained
with the pairwise BPR loss on (user, bought item, uniformly sampled other item) triples; early-stopped on
validation NDCG@10.

At evaluation time a user's history runs up to the evaluated stage, past what the factors saw in training
(and a quarter of the sample's test users have no training rows at all). By default (`user_vector="history"`)
a user is therefore folded in as the mean factor of their history items; `user_vector="factor"` gives the
classic trained user factor (fold-in only for users without training rows). The runner chooses between the two
on validation (`search_space`).

The factors and the bias are embedding tables with sparse gradients, trained by lazy Adam: a step reads and updates
only the rows of its batch, so an epoch costs in proportion to the training rows, not to steps x (users + items).
VBPR (a subclass) keeps dense gradients: its image projection is one dense matrix that every step updates."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.models.training import Trainer, TrainSettings, seed_everything, shuffled_batches


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
    sparse_gradients = True  # see the module docstring

    def fit(self, data, features, compute, log=None) -> dict:
        cfg = self.config
        seed_everything(cfg.seed)
        self.n_items = data.n_items
        side = self.init_side(data, features)  # VBPR's image projection; nothing for BPR-MF
        sparse = self.sparse_gradients and not side
        self.user_emb = torch.nn.Embedding(data.n_users, self.user_dim(), sparse=sparse)
        self.item_emb = torch.nn.Embedding(data.n_items, cfg.dim, sparse=sparse)
        self.bias_emb = torch.nn.Embedding(data.n_items, 1, sparse=sparse)  # x_ui = b_i + <p_u, q_i>
        torch.nn.init.normal_(self.user_emb.weight, std=0.1)
        torch.nn.init.normal_(self.item_emb.weight, std=0.1)
        torch.nn.init.zeros_(self.bias_emb.weight)
        self.trained_user = torch.zeros(data.n_users, dtype=torch.bool)
        self._users = torch.as_tensor(data.train["user_idx"].to_numpy().copy())
        self._items = torch.as_tensor(data.train["item_idx"].to_numpy().copy())
        self.trained_user[self._users] = True
        # The L2 penalty is in the loss (on the factors a batch uses, as in BPR), not the optimizer's decay.
        settings = TrainSettings.of(cfg, weight_decay=0.0, optimizer="sparse_adam" if sparse else "adamw")
        trainer = Trainer(settings, compute, log, self.name, unit="triples")
        report = trainer.fit(self, [self.user_emb.weight, self.item_emb.weight, self.bias_emb.weight, *side], data)
        self.finish_side()
        del self._users, self._items, self._gen
        return report

    def train_batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        self._gen = gen  # the negatives draw from the trainer's generator too
        return shuffled_batches(len(self._users), self.config.batch_size, gen)

    def batch_loss(self, b: torch.Tensor) -> tuple[torch.Tensor, int]:
        """BPR on (user, bought item, uniformly sampled item) triples, plus L2 on the factors used."""
        u, i = self._users[b], self._items[b]
        j = torch.randint(0, self.n_items, (len(b),), generator=self._gen)
        ue, (ie, bi), (je, bj) = self.user_emb(u), self.item_rows(i), self.item_rows(j)
        loss = -F.logsigmoid((ue * (ie - je)).sum(-1) + bi - bj).mean() + self.side_penalty()
        l2 = (ue.pow(2).sum() + ie.pow(2).sum() + je.pow(2).sum()) / len(b)
        return loss + self.config.weight_decay * l2, len(b)

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
        return self.item_emb(idx), self.bias_emb(idx)[:, 0]

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.item_emb.weight, self.item_bias

    @property
    def item_bias(self) -> torch.Tensor:
        return self.bias_emb.weight[:, 0]

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
                "item_bias": self.item_bias.detach().contiguous(), "trained_user": self.trained_user}

    def load_state_dict(self, state):
        self.user_emb = torch.nn.Embedding.from_pretrained(state["user"].clone(), freeze=False)
        self.item_emb = torch.nn.Embedding.from_pretrained(state["item"].clone(), freeze=False)
        self.bias_emb = torch.nn.Embedding.from_pretrained(state["item_bias"][:, None].clone(), freeze=False)
        self.trained_user = state["trained_user"].clone()
