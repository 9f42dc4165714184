"""GRU4Rec (Hidasi et al. 2016; Hidasi & Czapp 2023): a GRU reads the item sequence and its state after each
item predicts the next one. Trained with softmax cross-entropy over the whole catalog (GRU4Rec's CE loss with
every item as a negative) on padded sequence windows instead of session-parallel mini-batches: the same
targets, but batched like the other sequential models so they share one loop. Scores use the item
embedding table (tied output, as in GRU4Rec's constrained-embedding variant)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmrec_pipeline.models.sequential import SequentialConfig, SequentialRecommender


@dataclasses.dataclass
class GRU4RecConfig(SequentialConfig):
    """Defaults for small catalogs. Large catalogs: hidden_size 128-256 and `negatives` 2048+ (Hidasi's
    sampled CE / BPR-max regime); more layers rarely help GRU4Rec."""

    n_layers: int = 1
    dropout: float = 0.3  # on the item embeddings (GRU4Rec's embedding dropout)
    batch_size: int = 32  # small batches, many steps: GRU4Rec's regime (Hidasi & Czapp 2023)
    # The GRU's validation NDCG plateaus for a few epochs before it learns beyond popularity, so early
    # stopping waits longer than the transformers'. The lr is tuned on validation (`search_space`).
    lr: float = 3e-3
    patience: int = 8


# The grid the runner tunes on validation (models/runner.py); two points, as each is a full training run.
SEARCH_SPACE = {"lr": (1e-3, 3e-3)}


class GRUNet(nn.Module):
    def __init__(self, n_tokens: int, pad: int, d: int, layers: int, dropout: float):
        super().__init__()
        self.pad = pad
        self.item_emb = nn.Embedding(n_tokens, d, padding_idx=pad)
        # Larger than the transformers' 0.02: without LayerNorm or input scaling, tiny inputs keep the GRU
        # near its bias-only state and training stalls for several epochs.
        nn.init.normal_(self.item_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[pad].zero_()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(d, d)  # GRU state -> item-embedding space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The GRU must not read the left padding (its state would drift through the pads), so rotate each row
        # to put its items first, run, and rotate the outputs back; outputs after the items are never used.
        n = x.shape[1]
        n_pad = (x == self.pad).sum(1, keepdim=True)
        cols = torch.arange(n, device=x.device)[None, :]
        out, _ = self.gru(self.drop(self.item_emb(x.gather(1, (cols + n_pad) % n))))
        back = ((cols - n_pad) % n)[..., None].expand(-1, -1, out.shape[-1])
        return self.proj(out.gather(1, back))


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"
    Config = GRU4RecConfig
    search_space = SEARCH_SPACE

    def build_network(self):
        c = self.config
        return GRUNet(self.n_tokens(), self.pad, c.hidden_size, c.n_layers, c.dropout)
