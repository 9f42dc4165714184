"""BERT4Rec (Sun et al. 2019): a bidirectional transformer trained to recover masked items of the sequence
(cloze task) with softmax cross-entropy over the catalog. At score time [MASK] is appended after the history
and its output ranks the catalog. As in the paper, some training windows mask only their last item, which is
exactly the scoring situation."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from mmrec_pipeline.models.sequential import SequentialConfig, SequentialRecommender, TransformerEncoder
from mmrec_pipeline.models.training import IGNORE, pad_histories, windows


@dataclasses.dataclass
class BERT4RecConfig(SequentialConfig):
    """Defaults for small catalogs. BERT4Rec needs many more epochs than SASRec (Petrov & Macdonald 2022):
    raise `epochs`/`patience` on large data; large catalogs: hidden_size 128-256 and `negatives`."""

    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    dropout: float = 0.2
    mask_prob: float = 0.2  # share of items replaced by [MASK] in a training window
    last_item_prob: float = 0.2  # share of windows that mask only their last item (the scoring situation)
    lr: float = 2e-3
    epochs: int = 200
    patience: int = 8


# The grid the runner tunes on validation (models/runner.py); two points, as each is a full training run.
SEARCH_SPACE = {"lr": (1e-3, 2e-3)}


class BERT4Rec(SequentialRecommender):
    name = "bert4rec"
    Config = BERT4RecConfig
    search_space = SEARCH_SPACE

    @property
    def mask(self) -> int:
        return self.n_items + 1

    def n_tokens(self) -> int:
        return self.n_items + 2  # items + padding + [MASK]

    def build_network(self):
        c = self.config
        net = TransformerEncoder(self.n_tokens(), self.pad, c.max_len, c.hidden_size, c.n_layers, c.n_heads,
                                 c.inner_size, c.dropout, causal=False)
        net.out_bias = nn.Parameter(torch.zeros(self.n_items))  # item popularity prior of the output layer
        return net

    def training_windows(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # Windows of max_len items side by side (no overlap): the cloze task reads context on both sides.
        return windows(sequences, self.config.max_len, self.config.max_len, self.pad)

    def training_batch(self, w: torch.Tensor, skip: torch.Tensor, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        real = w != self.pad
        masked = (torch.rand(w.shape, generator=gen) < self.config.mask_prob) & real
        only_last = torch.rand(len(w), generator=gen) < self.config.last_item_prob
        masked[only_last] = False
        masked[only_last | ~masked.any(1), -1] = True  # the last column is always a real item
        x = torch.where(masked, torch.full_like(w, self.mask), w)
        y = torch.where(masked, w, torch.full_like(w, IGNORE))
        return x, y

    def score_inputs(self, history: list[np.ndarray]) -> torch.Tensor:
        return pad_histories(history, self.config.max_len, self.pad, suffix=self.mask)
