"""What GRU4Rec, SASRec and BERT4Rec share: training windows, a small transformer encoder and the next-item
losses; they train through `training.Trainer` (seeded, early-stopped on validation NDCG@10, with progress logs).

Conventions:
- Items are catalog indices 0..n_items-1; `n_items` is the padding token and `n_items + 1` the [MASK] token
  (BERT4Rec only). Every model scores the whole catalog with the item embedding table (tied output), so
  items never seen in training simply keep their (untrained, softmax-suppressed) embeddings.
- Sequences are left-padded: the most recent item is always the last column, so scoring reads one position.
- Training data are padded sequences, not Hidasi's session-parallel mini-batches: each user's train sequence
  is cut from the end into windows of `max_len + 1` items (`training.windows`) so that every transition in train is
  a target exactly once per epoch, with a target at every position (RecBole instead makes every prefix a
  separate sample, one target per forward pass: the main reason it is over 30x slower per epoch, see
  benchmarks/sequential_vs_recbole.py). Batches
  group windows of similar length and are trimmed to their longest one, which matters when most
  sequences are much shorter than `max_len`.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.models.training import (
    IGNORE,
    Trainer,
    TrainSettings,
    length_batches,
    pad_histories,
    seed_everything,
    trim,
    windows,
)


@dataclasses.dataclass
class SequentialConfig:
    """Fields every sequential model has. Defaults are for small catalogs (the `sample` store, ml-100k). The
    full softmax costs targets x catalog x hidden per epoch: past ~100k items set `negatives` (sampled
    softmax) and raise `batch_size`; for long histories (ml-1m) raise `max_len` to 200."""

    max_len: int = 50  # most recent items a model reads
    hidden_size: int = 64
    dropout: float = 0.2
    # ce: softmax cross-entropy (full catalog, or sampled softmax with `negatives` > 0) | bce: one sampled
    # negative per target (Kang & McAuley) | gbce: gSASRec's generalised BCE over `negatives` negatives
    loss: str = "ce"
    negatives: int = 0  # ce: 0 = full catalog, N > 0 = sampled softmax; gbce: N > 0 required
    # one set of N negatives for the whole batch (one [T, N] matmul) | N of its own for every target, as
    # RecTools (eSASRec's published runs) samples them: more distinct negatives per step, T x N x d gathered
    negatives_per: str = "batch"
    sampling: str = "uniform"  # negatives drawn uniformly | by training popularity
    logq: bool = False  # sampled softmax: subtract log(expected count) from each logit (matters for popularity)
    gbce_t: float = 0.75  # gbce calibration t in [0, 1] (Petrov & Macdonald 2023; 0 = plain BCE)
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # windows per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.999  # Adam's second-moment decay (RecTools' transformers use 0.98)
    # normal: N(0, 0.02) embeddings, torch's default for the layers | xavier: xavier_normal_ on every weight
    # matrix and embedding table at the start of training, as RecTools' Lightning module does
    init: str = "normal"
    patience: int = 5  # validation checks without improvement before stopping
    valid_users: int = 3000  # valid users early stopping scores (0: all)
    valid_metric: str = "ndcg"  # early stopping on NDCG@10 | recall: Recall@10 (RecTools' benchmark)
    valid_k: int = 10  # the early-stopping metric's cut-off (12 for H&M's MAP@12 task); the curve's key says it
    # full softmax: the padding token's row (zero, never trained) as one more class, as RecTools' softmax runs
    # over every item id, the padding id included; it adds a constant exp(0) to every target's denominator
    softmax_pad_class: bool = False
    eval_every: int = 1  # epochs between validation checks
    max_train_seconds: float = 0.0  # training time budget (0 = none; `epochs` still bounds it)
    # 0 = every user's windows each epoch; N > 0: each epoch trains the windows of N users drawn afresh (without
    # replacement) from those with a target, so that a user base too large for a CPU budget still gets several
    # validated epochs (an "epoch" is then N users' worth of transitions)
    users_per_epoch: int = 0
    seed: int = 0


def target_and_negative_logits(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, neg: torch.Tensor,
                                bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each target [T] and of its negatives [T, N] (output bias added if any). `neg` is [N], shared
    by the batch, or [T, N], one row per target."""
    pos = (h * w[t]).sum(-1)
    negs = h @ w[neg].T if neg.dim() == 1 else torch.bmm(w[neg], h[:, :, None]).squeeze(-1)
    if bias is not None:
        pos, negs = pos + bias[t], negs + per_target(bias[neg])
    return pos, negs


def per_target(x: torch.Tensor) -> torch.Tensor:
    """A value per negative, [N] (negatives shared by the batch) or [T, N], as a shape that broadcasts to [T, N]."""
    return x[None, :] if x.dim() == 1 else x


def accidental_hits(neg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[T, N]: where a drawn negative is the target itself (left out of the loss)."""
    return per_target(neg) == t[:, None]


def full_softmax_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Softmax cross-entropy of each target against the whole catalog. h [T, d], t [T], w [items, d]."""
    logits = h @ w.T + (bias if bias is not None else 0.0)
    return F.cross_entropy(logits.float(), t)


def sampled_softmax_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, neg: torch.Tensor,
                         bias: torch.Tensor | None = None, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of each target against itself and its N negatives `neg` ([N] shared by the batch,
    or [T, N]); a negative equal to the target is left out. `log_q` [items]: log of each item's expected count in the
    sample, subtracted from every logit (logQ correction, Bengio & Senécal 2008), so that popularity-sampled
    negatives estimate the full softmax; with uniform sampling it is a constant and changes nothing."""
    pos, negs = target_and_negative_logits(h, t, w, neg, bias)
    if log_q is not None:
        pos, negs = pos - log_q[t], negs - per_target(log_q[neg])
    logits = torch.cat([pos[:, None], negs], dim=1).float()
    logits[:, 1:][accidental_hits(neg, t)] = -torch.inf
    return F.cross_entropy(logits, torch.zeros_like(t))


def gbce_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, neg: torch.Tensor, calibration: float,
              n_items: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """gSASRec's generalised binary cross-entropy (Petrov & Macdonald 2023): the positive's probability is
    raised to the power beta = alpha (t (1 - 1/alpha) + 1/alpha) = 1 - t (1 - alpha), with alpha = N / (n_items
    - 1) the sampling rate; this undoes the overconfidence that N sampled negatives induce. t = `calibration`
    (0 = plain BCE, 1 = beta = alpha).
    Per target: (beta softplus(-s+) + sum_j softplus(s_j)) / (N + 1), the mean over its N + 1 logits as in
    the authors' code; a negative equal to the target is left out. Averaged over targets."""
    n = neg.shape[-1]
    alpha = n / max(n_items - 1, 1)
    beta = 1 - calibration * (1 - alpha)
    pos, negs = target_and_negative_logits(h, t, w, neg, bias)
    neg_terms = F.softplus(negs.float()).masked_fill(accidental_hits(neg, t), 0.0)
    per_target = beta * F.softplus(-pos.float()) + neg_terms.sum(1)
    return (per_target / (n + 1)).mean()


def bce_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, neg: torch.Tensor,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Kang & McAuley's BCE: each target against one negative of its own (`neg` [T])."""
    pos_logit, neg_logit = (h * w[t]).sum(-1), (h * w[neg]).sum(-1)
    if bias is not None:
        pos_logit, neg_logit = pos_logit + bias[t], neg_logit + bias[neg]
    return F.softplus(-pos_logit).mean() + F.softplus(neg_logit).mean()


class Block(nn.Module):
    """Pre-LayerNorm transformer block (trains without learning-rate warm-up), or with `layout="sasrec"` Kang &
    McAuley's: only the query is normalised (keys and values read the block's input as it is) and each residual
    adds to the normalised input.

    Dropout on the two residual branches (and the input embeddings); on the attention weights and inside the
    feed-forward layer only when asked (`attention_dropout`, `inner_dropout`), as drawing those masks took ~30%
    of a CPU training step when profiled."""

    def __init__(self, d: int, heads: int, inner: int, dropout: float, gated: bool = False,
                 attention_dropout: float = 0.0, inner_dropout: float = 0.0, layout: str = "pre_ln",
                 activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"feed-forward activation '{activation}': expected 'gelu' or 'relu'")
        if layout not in ("pre_ln", "sasrec"):
            raise ValueError(f"block layout '{layout}': expected 'pre_ln' or 'sasrec'")
        self.heads, self.attention_dropout, self.layout = heads, attention_dropout, layout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        inner_drop = [nn.Dropout(inner_dropout)] if inner_dropout else []
        self.ff = nn.Sequential(nn.Linear(d, inner), nn.GELU() if activation == "gelu" else nn.ReLU(), *inner_drop, nn.Linear(inner, d))
        self.drop = nn.Dropout(dropout)
        # LiGR (Gu et al. 2025, used by eSASRec): each residual branch is scaled by sigmoid(W x) of the
        # block's input, so a layer can learn to pass its input through unchanged
        self.gates = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d)]) if gated else None

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.ln1(x)
        if self.layout == "sasrec":
            w, bias = self.qkv.weight, self.qkv.bias
            qkv = torch.cat([F.linear(h, w[:d], bias[:d]), F.linear(x, w[d:], bias[d:])], dim=-1)
            x = h
        else:
            qkv = self.qkv(h)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        x = x + self.gate(0, x) * self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        h = self.ln2(x)
        if self.layout == "sasrec":
            x = h
        return x + self.gate(1, x) * self.drop(self.ff(h))

    def gate(self, i: int, x: torch.Tensor) -> torch.Tensor | float:
        return 1.0 if self.gates is None else torch.sigmoid(self.gates[i](x))


class TransformerEncoder(nn.Module):
    """Item + learned position embeddings and `layers` blocks; causal (SASRec) or bidirectional (BERT4Rec).

    Positions count from the left of a full `max_len` window, so the last column is always position
    max_len - 1 (as in Kang & McAuley) even when a batch was trimmed."""

    def __init__(self, n_tokens: int, pad: int, max_len: int, d: int, layers: int, heads: int, inner: int,
                 dropout: float, causal: bool, gated: bool = False, attention_dropout: float = 0.0,
                 inner_dropout: float = 0.0, layout: str = "pre_ln", scale_embeddings: bool = True,
                 activation: str = "gelu", key_padding_mask: bool = True):
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden_size {d} must be divisible by n_heads {heads}")
        self.pad, self.max_len, self.causal, self.key_padding_mask = pad, max_len, causal, key_padding_mask
        self.scale = math.sqrt(d) if scale_embeddings else 1.0
        self.item_emb = nn.Embedding(n_tokens, d, padding_idx=pad)
        self.pos_emb = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, inner, dropout, gated, attention_dropout, inner_dropout,
                                          layout, activation)
                                    for _ in range(layers))
        self.ln, self.drop = nn.LayerNorm(d), nn.Dropout(dropout)
        for p in (self.item_emb.weight, self.pos_emb.weight):
            nn.init.normal_(p, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[pad].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if not self.key_padding_mask and n < self.max_len:
            # without the mask the padded keys dilute attention, so their number must not depend on how a batch
            # was trimmed: every sequence is read as the full max_len window, as RecTools pads it
            x = F.pad(x, (self.max_len - n, 0), value=self.pad)
        pos = torch.arange(self.max_len - x.shape[1], self.max_len, device=x.device)
        h = self.drop(self.item_emb(x) * self.scale + self.pos_emb(pos))
        real = (x != self.pad)[:, None, None, :]  # [B, 1, 1, L]
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        if self.key_padding_mask:
            # Keys a query may attend to: real items (earlier ones only if causal) and always itself, so no row
            # is fully masked (that would give NaN, which 0-weights do not cancel in the weighted sum).
            allowed = real | eye
        else:
            # RecTools' SASRec: the causal mask only; padded positions are zeroed before every block, so a query
            # reads them as keys and values carrying biases only
            allowed = torch.ones_like(eye)
        if self.causal:
            allowed = allowed & torch.ones_like(eye).tril()
        keep = real[:, 0, 0, :, None].to(h.dtype)  # [B, L, 1]
        for block in self.blocks:
            h = block(h if self.key_padding_mask else h * keep, allowed)
        return self.ln(h)[:, -n:]


def xavier_init(net: nn.Module, pad: int) -> None:
    """xavier_normal_ on every parameter of two or more dimensions (weight matrices, embedding tables; biases
    and LayerNorms keep torch's init), as RecTools does when training starts; the padding row stays zero."""
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        net.item_emb.weight[pad].zero_()


class SequentialRecommender(Recommender):
    """A model that encodes a left-padded item sequence into one vector per position and scores items by the
    dot product with their embeddings. Subclasses build the network and may change how batches are made."""

    kind = "sequential"

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.net: nn.Module | None = None
        self.compute = Compute(device="cpu")

    # --- what a subclass provides ---------------------------------------------------------------

    @abc.abstractmethod
    def build_network(self) -> nn.Module:
        """A module mapping [B, L] token ids to [B, L, hidden] and holding `item_emb` (nn.Embedding)."""

    @property
    def pad(self) -> int:
        return self.n_items

    def n_tokens(self) -> int:
        return self.n_items + 1  # items + padding

    def training_windows(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # Inputs are the first max_len items of a window, targets the last max_len. Windows overlap by half,
        # so every trained target sees at least max_len / 2 items of context (as at scoring time, where the
        # model reads max_len items) instead of as few as one at a window's start.
        max_len = self.config.max_len
        return windows(sequences, max_len + 1, max(1, (max_len + 1) // 2), self.pad)

    def training_batch(self, w: torch.Tensor, skip: torch.Tensor, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for a batch of windows; target IGNORE where nothing is to be predicted."""
        x, y = w[:, :-1], w[:, 1:].clone()
        y[(x == self.pad) | (y == self.pad)] = IGNORE
        y[torch.arange(y.shape[1])[None, :] < skip[:, None]] = IGNORE  # trained in an older window
        return x, y

    def score_inputs(self, history: list[np.ndarray]) -> torch.Tensor:
        return pad_histories(history, self.config.max_len, self.pad)

    # --- shared machinery -----------------------------------------------------------------------

    def item_weights(self) -> torch.Tensor:
        return self.net.item_emb.weight[: self.n_items]

    def output_bias(self) -> torch.Tensor | None:
        return getattr(self.net, "out_bias", None)

    def negative_distribution(self, data) -> torch.Tensor | None:
        """Sampling probabilities of the items as negatives: None = uniform; `sampling="popularity"`: training
        counts (add-one smoothed, so every item can be drawn)."""
        if self.config.sampling == "uniform":
            return None
        if self.config.sampling != "popularity":
            raise ValueError(f"{self.name}: sampling must be 'uniform' or 'popularity', got '{self.config.sampling}'")
        counts = torch.as_tensor(data.train_counts(), dtype=torch.float64) + 1.0
        return (counts / counts.sum()).float()

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Next-item loss at the positions with a target (see the loss functions below). Logits are computed
        only there, so the cost is (#targets × catalog or negatives), never (batch × length × catalog)."""
        cfg = self.config
        keep = targets != IGNORE
        h, t = hidden[keep], targets[keep]
        w, bias = self.item_weights(), self.output_bias()
        if cfg.loss == "bce":  # Kang & McAuley: one uniformly sampled negative per positive
            neg = torch.randint(0, self.n_items, t.shape, generator=gen).to(t.device)
            return bce_loss(h, t, w, neg, bias)
        if cfg.loss not in ("ce", "gbce"):
            raise ValueError(f"{self.name}: loss must be 'ce', 'bce' or 'gbce', got '{cfg.loss}'")
        if cfg.loss == "ce" and cfg.negatives <= 0:  # full-catalog softmax (Klenitskiy & Vasilev 2023)
            if cfg.softmax_pad_class:
                w = self.net.item_emb.weight[: self.pad + 1]
                bias = None if bias is None else F.pad(bias, (0, 1))
            return full_softmax_loss(h, t, w, bias)
        if cfg.negatives <= 0:
            raise ValueError(f"{self.name}: loss 'gbce' needs negatives > 0")
        if cfg.negatives_per not in ("batch", "target"):
            raise ValueError(f"{self.name}: negatives_per must be 'batch' or 'target', got '{cfg.negatives_per}'")
        shape = (cfg.negatives,) if cfg.negatives_per == "batch" else (len(t), cfg.negatives)
        probs = getattr(self, "negative_probs", None)
        if probs is None:
            neg = torch.randint(0, self.n_items, shape, generator=gen)
        else:
            neg = torch.multinomial(probs, math.prod(shape), replacement=True, generator=gen).view(shape)
        neg = neg.to(t.device)
        if cfg.loss == "gbce":
            return gbce_loss(h, t, w, neg, cfg.gbce_t, self.n_items, bias)
        log_q = None
        if cfg.logq:  # log of each item's expected count among the negatives
            q = torch.full((self.n_items,), 1.0 / self.n_items) if probs is None else probs
            log_q = torch.log(q * cfg.negatives).to(t.device)
        return sampled_softmax_loss(h, t, w, neg, bias, log_q)

    # --- training: the trainer's batches and loss ----------------------------------------------------

    def train_batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        self.net.train()
        self._gen = gen  # masking and negatives draw from the trainer's generator too
        n = self.config.users_per_epoch
        if n > 0 and n < len(self._sequences):
            pick = torch.randperm(len(self._sequences), generator=gen)[:n].sort().values.tolist()
            self._set_windows([self._sequences[i] for i in pick])
        return length_batches(self._lengths, self.config.batch_size, gen)

    def _set_windows(self, sequences: list[np.ndarray]) -> None:
        self._windows, self._skip = map(torch.from_numpy, self.training_windows(sequences))
        self._lengths = (self._windows != self.pad).sum(1)

    def batch_loss(self, b: torch.Tensor) -> tuple[torch.Tensor, int]:
        x, y = trim(*self.training_batch(self._windows[b], self._skip[b], self._gen), pad=self.pad)
        n = int((y != IGNORE).sum())  # counted on the CPU copy: no device sync per step
        device = self.compute.torch_device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return self.loss(self.net(x), y, self._gen), n

    def fit(self, data, features, compute, log=None) -> dict:
        seed_everything(self.config.seed)
        self.n_items, self.compute = data.n_items, compute
        self.net = self.build_network().to(compute.torch_device)
        if self.config.init not in ("normal", "xavier"):
            raise ValueError(f"{self.name}: init must be 'normal' or 'xavier', got '{self.config.init}'")
        if self.config.init == "xavier":
            xavier_init(self.net, self.pad)
        self.negative_probs = self.negative_distribution(data)
        if self.config.users_per_epoch < 0:
            raise ValueError(f"{self.name}: users_per_epoch must be >= 0, got {self.config.users_per_epoch}")
        # the users with a target (two or more training items): those an epoch's sample is drawn from
        self._sequences = [s for s in data.sequences("train") if len(s) >= 2]
        if not self._sequences:
            raise ValueError(f"{self.name}: no user has two or more training interactions to learn from")
        if not 0 < self.config.users_per_epoch < len(self._sequences):
            self._set_windows(self._sequences)  # every epoch trains every window: cut them once
        trainer = Trainer(TrainSettings.of(self.config), compute, log, self.name, unit="targets")
        report = trainer.fit(self, self.net.parameters(), data)
        self.net.eval()
        report["training_windows"] = len(self._windows)  # of the last epoch, with users_per_epoch
        del self._windows, self._skip, self._lengths, self._gen, self._sequences
        return report

    @torch.no_grad()
    def score(self, users, history) -> torch.Tensor:
        device = self.compute.torch_device
        self.net.eval()
        x = trim(self.score_inputs(history), pad=self.pad)[0].to(device)
        with self.compute.autocast():
            h = self.net(x)[:, -1]
        bias = self.output_bias()
        scores = h.float() @ self.item_weights().float().T
        if bias is not None:
            scores = scores + bias.float()
        return scores.cpu()

    def state_dict(self):
        return dict(self.net.state_dict())

    def load_state_dict(self, state):
        if self.net is None:
            self.net = self.build_network()
        self.net.load_state_dict(state)
        self.net.to(self.compute.torch_device).eval()
