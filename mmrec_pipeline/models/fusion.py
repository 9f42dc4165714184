"""Learned text–vision item encoders of the `lvlm_retrieval` strategies (attention, gating, SMORE, cross-attention).

Each module maps an item's text vector [n, text_dim] and image vector [n, vision_dim] to one fused vector
[n, dim]. None of them has item-ID embeddings: every item, including one nobody bought yet, is embedded from its
content alone, which is what makes them item *representation* strategies comparable with the fixed ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class AttentionFusion(nn.Module):
    """Per-item attention over the two projected modalities: a = softmax_m(q·tanh(W h_m)), e = Σ_m a_m h_m."""

    def __init__(self, text_dim: int, vision_dim: int, dim: int, dropout: float = 0.1, **_):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.text, self.vision = nn.Linear(text_dim, dim), nn.Linear(vision_dim, dim)
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, text, vision, graphs=None):
        h = torch.stack([self.text(self.drop(text)), self.vision(self.drop(vision))], dim=1)  # [n, 2, d]
        return (torch.softmax(self.score(h), dim=1) * h).sum(1)


class GatingFusion(nn.Module):
    """Per-dimension gate from both modalities: g = σ(W[h_t; h_v]), e = g ⊙ h_t + (1 − g) ⊙ h_v."""

    def __init__(self, text_dim: int, vision_dim: int, dim: int, dropout: float = 0.1, **_):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.text, self.vision = nn.Linear(text_dim, dim), nn.Linear(vision_dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, text, vision, graphs=None):
        t, v = self.text(self.drop(text)), self.vision(self.drop(vision))
        g = torch.sigmoid(self.gate(torch.cat([t, v], dim=1)))
        return g * t + (1 - g) * v


class CrossAttentionFusion(nn.Module):
    """Each modality becomes `tokens` learned tokens; text tokens attend to vision tokens and vice versa
    (multi-head, residual + LayerNorm); the item vector is the mean of all tokens. With one token per modality the
    attention would have a single key and be the identity, hence several tokens."""

    def __init__(self, text_dim: int, vision_dim: int, dim: int, dropout: float = 0.1, tokens: int = 4,
                 heads: int = 4, **_):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.drop = nn.Dropout(dropout)
        self.text, self.vision = nn.Linear(text_dim, tokens * dim), nn.Linear(vision_dim, tokens * dim)
        self.text_to_vision = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.vision_to_text = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_t, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, text, vision, graphs=None):
        n = text.shape[0]
        t = self.text(self.drop(text)).view(n, self.tokens, self.dim)
        v = self.vision(self.drop(vision)).view(n, self.tokens, self.dim)
        t2 = self.norm_t(t + self.text_to_vision(t, v, v, need_weights=False)[0])
        v2 = self.norm_v(v + self.vision_to_text(v, t, t, need_weights=False)[0])
        return torch.cat([t2, v2], dim=1).mean(1)


class SpectralFusion(nn.Module):
    """SMORE's item side (Ong & Khong, "Spectrum-based Modality Representation Fusion Graph Convolutional Network
    for Multimodal Recommendation", WSDM 2025; after the authors' code):

    1. project each modality to `dim`; real FFT along the feature axis (ortho);
    2. denoise each spectrum with a learnable complex filter (uni-modal views), and fuse the modalities as the
       product of their spectra times a third filter (convolution theorem: a product of spectra is a circular
       convolution of the features) — inverse FFT back;
    3. gate each view, then propagate it `layers` times over an item–item kNN graph: the text graph, the image
       graph, and for the fused view their element-wise max (see `knn_graph`, `max_graph`);
    4. modality-aware preference: per-dimension attention weights computed from the fused view re-weight the
       uni-modal views; the item vector is the mean of the three views.

    Kept small on purpose, and two documented departures: SMORE multiplies each spectral view into an item-ID
    embedding (ID ⊙ σ(W z)) and adds a LightGCN user–item view; here there are no IDs (see the module doc), so
    each view gates itself (z ⊙ σ(W z)), and the user side is the retrieval framework's history mean, which is
    SMORE's own user read-out of its modality views (R · item views). The softmax attention is scaled by `dim` so
    that it re-weights dimensions around 1 instead of shrinking the views by 1/dim.
    """

    def __init__(self, text_dim: int, vision_dim: int, dim: int, dropout: float = 0.1, layers: int = 2, **_):
        super().__init__()
        self.dim, self.layers = dim, layers
        self.drop = nn.Dropout(dropout)
        self.text, self.vision = nn.Linear(text_dim, dim), nn.Linear(vision_dim, dim)
        n_freq = dim // 2 + 1
        # Complex filters as (real, imag) pairs. SMORE draws them from N(0, 1); starting at the identity filter
        # (1 + 0j, plus a little noise) keeps the first epochs from scrambling the projected features.
        self.filters = nn.ParameterDict({m: nn.Parameter(torch.stack(
            [torch.ones(n_freq), torch.zeros(n_freq)], dim=-1) + 0.02 * torch.randn(n_freq, 2)) for m in "tvf"})
        self.gates = nn.ModuleDict({m: nn.Linear(dim, dim) for m in "tvf"})
        self.queries = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim, bias=False))
                                      for m in "tv"})

    def spectrum(self, t, v):
        """Uni-modal denoised views and the fused view (SMORE's `spectrum_convolution`)."""
        ft, fv = torch.fft.rfft(t, dim=1, norm="ortho"), torch.fft.rfft(v, dim=1, norm="ortho")
        w = {m: torch.view_as_complex(p.contiguous()) for m, p in self.filters.items()}

        def back(f):
            return torch.fft.irfft(f, n=self.dim, dim=1, norm="ortho")

        return back(ft * w["t"]), back(fv * w["v"]), back(ft * fv * w["f"])

    def forward(self, text, vision, graphs):
        zt, zv, zf = self.spectrum(self.text(self.drop(text)), self.vision(self.drop(vision)))
        views = {}
        for m, z in zip("tvf", (zt, zv, zf), strict=True):
            h = z * torch.sigmoid(self.gates[m](z))
            for _ in range(self.layers):
                h = torch.sparse.mm(graphs[m], h)
            views[m] = h
        att = {m: torch.softmax(self.queries[m](views["f"]), dim=1) * self.dim for m in "tv"}
        return torch.stack([att["t"] * views["t"], att["v"] * views["v"], views["f"]]).mean(0)


FUSIONS: dict[str, type[nn.Module]] = {
    "attention_fusion": AttentionFusion,
    "gating_fusion": GatingFusion,
    "smore": SpectralFusion,
    "cross_attention": CrossAttentionFusion,
}


def knn_graph(x: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Symmetrically normalised item–item kNN graph D^-1/2 A D^-1/2 as a sparse COO tensor: A[i, j] = 1 for the
    k most cosine-similar items j of item i (itself included), as SMORE/FREEDOM build their modality graphs.
    Items without the feature (zero rows) get only their self-loop, and no one's neighbour. Rows in chunks: never an n×n matrix."""
    x = F.normalize(x.float(), dim=1)
    n, k = x.shape[0], min(k, x.shape[0])
    cols = []
    for lo in range(0, n, chunk):
        sim = x[lo:lo + chunk] @ x.T
        sim[torch.arange(sim.shape[0]), torch.arange(lo, lo + sim.shape[0])] = np.inf  # self first, always
        cols.append(sim.topk(k, dim=1).indices)
    rows = torch.arange(n).repeat_interleave(k)
    cols = torch.cat(cols).reshape(-1)
    empty = x.abs().sum(1) == 0
    keep = (rows == cols) | (~empty[rows] & ~empty[cols])
    rows, cols = rows[keep], cols[keep]
    deg = torch.bincount(rows, minlength=n).float()
    values = deg[rows].rsqrt() * deg[cols].rsqrt()
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()


def max_graph(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise max of two sparse graphs over the union of their edges (SMORE's `max_pool_fusion`)."""
    n = a.shape[0]
    keys = torch.cat([a.indices()[0] * n + a.indices()[1], b.indices()[0] * n + b.indices()[1]])
    vals = torch.cat([a.values(), b.values()])
    uniq, inv = torch.unique(keys, return_inverse=True)
    out = torch.full((len(uniq),), -np.inf).scatter_reduce(0, inv, vals, reduce="amax")
    return torch.sparse_coo_tensor(torch.stack([uniq // n, uniq % n]), out, (n, n), check_invariants=False).coalesce()
