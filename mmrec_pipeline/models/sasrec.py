"""SASRec (Kang & McAuley 2018): causal self-attention over the item sequence; the output at each position
predicts the next item. Trained by default with softmax cross-entropy over the whole catalog, which
Klenitskiy & Vasilev (2023) showed beats the original BCE with one sampled negative (kept as `loss="bce"`).
Also: sampled softmax (`negatives` > 0, optional popularity sampling with logQ correction), gSASRec's gBCE
(`loss="gbce"`) and LiGR-gated layers (`gated`), each a config field a dataset can set or tune."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmrec_pipeline.models.sequential import SequentialConfig, SequentialRecommender, TransformerEncoder


@dataclasses.dataclass
class SASRecConfig(SequentialConfig):
    """Defaults for small catalogs (the `sample` store, ml-100k). Large catalogs: hidden_size 128-256,
    `negatives` 1000-10000 once the catalog passes ~100k items, max_len 200 for long histories (ml-1m)."""

    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256  # feed-forward width
    dropout: float = 0.3
    gated: bool = False  # LiGR-style gated residuals (the "e" of eSASRec's layers; see sequential.Block)
    # dropout on the attention weights and between the feed-forward layer's two linears (RecTools' SASRec,
    # which eSASRec's published runs use, has both at `dropout`); 0 = off, the cheaper CPU step
    attention_dropout: float = 0.0
    inner_dropout: float = 0.0
    layout: str = "pre_ln"  # pre_ln | sasrec: Kang & McAuley's block (sequential.Block)
    activation: str = "gelu"  # feed-forward activation: gelu | relu (Kang & McAuley's, RecTools' SASRec layers)
    scale_embeddings: bool = True  # item embeddings times sqrt(hidden_size) at the input (RecTools: off)
    # all: every window of each train sequence (SequentialRecommender.training_windows) | latest: only each
    # user's most recent max_len + 1 items, one window per user, as RecTools' data preparator cuts them
    train_windows: str = "all"
    # a learned score per item added to every logit (BERT4Rec has one): lets a BCE-type loss lower every logit
    # without moving the tied item table, which is also the input
    output_bias: bool = False
    # False: a separate output item table scores the next item (gSASRec's default, reuse_item_embeddings=False);
    # True: the input table, tied (RecTools, Kang & McAuley)
    tied_output: bool = True
    # False: the causal mask only, padded positions zeroed before each block and read as keys, every sequence
    # at the full max_len (RecTools' SASRec default, which its published Toys run keeps; sequential.TransformerEncoder)
    key_padding_mask: bool = True


# The grid the runner tunes on validation (models/runner.py); two points, as each is a full training run.
SEARCH_SPACE = {"lr": (1e-3, 2e-3)}


class SASRec(SequentialRecommender):
    name = "sasrec"
    Config = SASRecConfig
    search_space = SEARCH_SPACE

    def training_windows(self, sequences):
        if self.config.train_windows not in ("all", "latest"):
            raise ValueError(f"sasrec: train_windows must be 'all' or 'latest', got '{self.config.train_windows}'")
        if self.config.train_windows == "latest":
            sequences = [s[-(self.config.max_len + 1):] for s in sequences]
        return super().training_windows(sequences)

    def build_network(self):
        c = self.config
        net = TransformerEncoder(self.n_tokens(), self.pad, c.max_len, c.hidden_size, c.n_layers, c.n_heads,
                                 c.inner_size, c.dropout, causal=True, gated=c.gated,
                                 attention_dropout=c.attention_dropout, inner_dropout=c.inner_dropout,
                                 layout=c.layout, scale_embeddings=c.scale_embeddings,
                                 activation=c.activation, key_padding_mask=c.key_padding_mask)
        if c.output_bias:
            net.out_bias = nn.Parameter(torch.zeros(self.n_items))
        if not c.tied_output:
            net.out_emb = nn.Embedding(self.n_items, c.hidden_size)
            nn.init.normal_(net.out_emb.weight, std=0.02)  # as the input table
        return net

    def item_weights(self) -> torch.Tensor:
        out = getattr(self.net, "out_emb", None)
        return super().item_weights() if out is None else out.weight
