"""DeepCoNN (Zheng, Noroozi & Yu 2017): two CNN towers read the review text a user wrote and the review text an
item received, each a word-embedding layer, a 1-D convolution, max-pooling over time and a dense layer; a
factorization machine on the two concatenated outputs regresses the rating. Used as a ranker: a user's scores are
the predicted ratings of every catalog item. One of the MM-GPT2Rec paper's baselines, whose table filled them with
random tensors.

Only TRAINING rows' reviews build the documents (valid/test reviews would leak the targets), most recent first,
cut to `doc_len` tokens; the vocabulary is the `vocab` most frequent training words (index 1 = unknown, 0 = pad).
Word vectors are learned from scratch (the paper used pre-trained word2vec; no such weights are packaged here).
Users without training reviews read an empty document, so their ranking is the items' side of the model alone.
Trained with MSE on training ratings (AdamW, `training.Trainer`), early-stopped on validation NDCG@10 of the ranking it induces.

The FM's pairwise term separates into user and item parts, so scoring a user against the whole catalog is one
matrix product: with z = [x_u; y_i], FM(z) = w0 + w·z + Σ_f ((Vᵀz)_f² − ((V²)ᵀz²)_f) / 2 and
(Vᵀz)_f² = (V_uᵀx_u)_f² + (V_iᵀy_i)_f² + 2 (V_uᵀx_u)_f (V_iᵀy_i)_f."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from mmrec_pipeline.data.dataset import SPLIT_COLUMNS
from mmrec_pipeline.models.base import MissingFeature, Recommender
from mmrec_pipeline.models.training import Trainer, TrainSettings, seed_everything, shuffled_batches

WORD = re.compile(r"[a-z0-9']+")


@dataclasses.dataclass
class DeepCoNNConfig:
    """Sized for `make demo` on 2 CPU cores (the paper: 300-d word2vec, 100 filters, documents of ~1,000
    words); raise doc_len, word_dim and filters on a GPU."""

    vocab: int = 5000  # most frequent training words kept
    doc_len: int = 64  # tokens per user / item document
    word_dim: int = 32
    filters: int = 32  # convolution kernels per tower
    kernel: int = 3  # words per kernel
    latent: int = 32  # each tower's output size
    fm_factors: int = 8
    dropout: float = 0.5
    epochs: int = 8  # upper bound; early stopping on validation NDCG@10 usually ends sooner
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 2
    seed: int = 0


# The grid the runner tunes on validation (models/runner.py); two points, as each is a full training run.
SEARCH_SPACE = {"dropout": (0.2, 0.5)}


def documents(rows: pl.DataFrame, key: str, n: int, vocab: dict[str, int], length: int) -> torch.Tensor:
    """[n, length] token ids: the reviews of each `key` index (most recent first), concatenated and cut."""
    docs = torch.zeros(n, length, dtype=torch.long)
    texts = (rows.sort("t", descending=True).group_by(key, maintain_order=True)
             .agg(pl.col("review").str.join(" ")))
    for idx, text in texts.iter_rows():
        ids = [vocab.get(w, 1) for w in WORD.findall(text.lower())][:length]
        if ids:
            docs[idx, :len(ids)] = torch.tensor(ids)
    return docs


class Tower(nn.Module):
    def __init__(self, n_words: int, cfg: DeepCoNNConfig):
        super().__init__()
        self.emb = nn.Embedding(n_words, cfg.word_dim, padding_idx=0)
        self.conv = nn.Conv1d(cfg.word_dim, cfg.filters, cfg.kernel, padding=cfg.kernel // 2)
        self.out = nn.Linear(cfg.filters, cfg.latent)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(self.emb(tokens).transpose(1, 2)))  # [B, filters, len]
        h = h.masked_fill((tokens == 0)[:, None, :], 0.0).amax(2)  # max over real words (0 for empty docs)
        return self.out(self.drop(h))


class DeepCoNNNet(nn.Module):
    def __init__(self, n_words: int, cfg: DeepCoNNConfig):
        super().__init__()
        self.user_tower, self.item_tower = Tower(n_words, cfg), Tower(n_words, cfg)
        self.w0 = nn.Parameter(torch.zeros(()))
        self.w_user, self.w_item = nn.Linear(cfg.latent, 1, bias=False), nn.Linear(cfg.latent, 1, bias=False)
        self.v_user = nn.Parameter(torch.randn(cfg.latent, cfg.fm_factors) * 0.01)
        self.v_item = nn.Parameter(torch.randn(cfg.latent, cfg.fm_factors) * 0.01)

    def side(self, x: torch.Tensor, w: nn.Linear, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the side's own FM terms [B], its factor sum Vᵀx [B, f])."""
        a = x @ v
        own = w(x).squeeze(-1) + 0.5 * (a.pow(2) - x.pow(2) @ v.pow(2)).sum(-1)
        return own, a

    def pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predicted rating of row-aligned (user, item) pairs."""
        (ou, au), (oi, ai) = self.side(x, self.w_user, self.v_user), self.side(y, self.w_item, self.v_item)
        return self.w0 + ou + oi + (au * ai).sum(-1)

    def all_pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predicted ratings [len(x), len(y)] of every user against every item."""
        (ou, au), (oi, ai) = self.side(x, self.w_user, self.v_user), self.side(y, self.w_item, self.v_item)
        return self.w0 + ou[:, None] + oi[None, :] + au @ ai.T


class DeepCoNN(Recommender):
    name = "deepconn"
    split_columns = (*SPLIT_COLUMNS, "rating", "review_title", "review_text")
    Config = DeepCoNNConfig
    search_space = SEARCH_SPACE

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.net: DeepCoNNNet | None = None
        self._item_vectors: torch.Tensor | None = None

    def build_documents(self, data) -> pl.DataFrame:
        """Vocabulary and user/item documents from the TRAINING rows; returns the rated training rows."""
        cfg = self.config
        train = data.train.with_columns(
            pl.concat_str([pl.col("review_title").fill_null(""), pl.col("review_text").fill_null("")],
                          separator=" ").alias("review"))
        train = train.filter(pl.col("rating").is_not_null())
        if train.height == 0 or (train["review"].str.strip_chars() == "").all():
            raise MissingFeature(f"deepconn: dataset '{data.name}' has no training rows with both a rating (column "
                                 "`rating`) and review text (`review_title`/`review_text`); DeepCoNN regresses "
                                 "ratings from reviews, so it cannot run on this dataset")
        counts = Counter(w for text in train["review"].to_list() for w in WORD.findall(text.lower()))
        vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(cfg.vocab))}
        self.n_items, self.n_words = data.n_items, len(vocab) + 2
        self.user_docs = documents(train, "user_idx", data.n_users, vocab, cfg.doc_len)
        self.item_docs = documents(train, "item_idx", data.n_items, vocab, cfg.doc_len)
        return train

    def fit(self, data, features, compute, log=None) -> dict:
        seed_everything(self.config.seed)
        train = self.build_documents(data)
        self.net = DeepCoNNNet(self.n_words, self.config)
        self._users = torch.as_tensor(train["user_idx"].to_numpy().copy())
        self._items = torch.as_tensor(train["item_idx"].to_numpy().copy())
        self._ratings = torch.as_tensor(train["rating"].to_numpy().copy(), dtype=torch.float32)
        trainer = Trainer(TrainSettings.of(self.config), compute, log, self.name, unit="ratings")
        report = trainer.fit(self, self.net.parameters(), data)
        report.update({"vocab": self.n_words, "ratings": len(self._users),
                       "users_with_reviews": int((self.user_docs[:, 0] > 0).sum())})
        del self._users, self._items, self._ratings
        return report

    def train_batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        self.net.train()
        self._item_vectors = None
        return shuffled_batches(len(self._users), self.config.batch_size, gen)

    def batch_loss(self, b: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean squared error of the predicted ratings."""
        x = self.net.user_tower(self.user_docs[self._users[b]])
        y = self.net.item_tower(self.item_docs[self._items[b]])
        return F.mse_loss(self.net.pairs(x, y), self._ratings[b]), len(b)

    @torch.no_grad()
    def score(self, users, history) -> torch.Tensor:
        self.net.eval()
        if self._item_vectors is None:
            self._item_vectors = torch.cat([self.net.item_tower(d) for d in self.item_docs.split(512)])
        x = self.net.user_tower(self.user_docs[torch.as_tensor(users, dtype=torch.long)])
        return self.net.all_pairs(x, self._item_vectors)

    def extra_config(self):
        return {**super().extra_config(), "n_words": self.n_words}

    def apply_extra_config(self, extra):
        super().apply_extra_config(extra)
        self.n_words = extra["n_words"]

    def state_dict(self):
        return {**{f"net.{k}": v for k, v in self.net.state_dict().items()},
                "user_docs": self.user_docs, "item_docs": self.item_docs}

    def load_state_dict(self, state):
        if self.net is None:
            self.net = DeepCoNNNet(self.n_words, self.config)
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.user_docs, self.item_docs = state["user_docs"].clone(), state["item_docs"].clone()
        self._item_vectors = None
