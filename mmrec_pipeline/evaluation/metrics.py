"""Ranking metrics over the whole catalog: one batched evaluator shared by every model.

Data-model independent: users and items are integer indices (0..n_items-1); the caller
(`protocols.py`) maps ids to indices and decides what is history and what is relevant.

Definitions (per user, top-K list L = the K best-scored items that are not masked, best first,
ties broken by lower item index; rel = the user's relevant items; rank j = 1..K):

- ``hr``        1 if any item of L is relevant, else 0.
- ``precision`` hits / K (a slot left empty because fewer than K items are rankable is a miss).
- ``recall``    hits / |rel|.
- ``ndcg``      DCG / IDCG with binary gain: DCG = sum_j rel_j / log2(j + 1),
                IDCG = sum_{j=1..min(|rel|, K)} 1 / log2(j + 1).
- ``mrr``       1 / rank of the first relevant item in L, 0 if none.
- ``map``       AP@K = sum_j rel_j * precision@j / min(|rel|, K).
- ``coverage``  |union of all users' L| / n_items (one number, no per-user value).
- ``diversity`` intra-list diversity: mean over item pairs of L of (1 - cosine(item_vectors)),
                in [0, 2] ([0, 1] for non-negative vectors), or of [category differs] when only
                item_categories are given; undefined (skipped) for lists with fewer than two items.
- ``novelty``   mean over the items of L of -log2 p(i), p(i) = (train_counts[i] + 1) / (sum + n_items).
- ``cutoff_tie`` 1 if the K-th item of L has the same score as the next item not in L (the cut-off falls
                inside a tie, so the tie order, lower index first, decided what made the list), else 0.
                Averaged, the share of users for whom that is so (popularity, EASE zeros, unseen items).

Ranking: higher score first; -inf means "never recommend" (such items fill no slot); NaN raises.
Per-user values are averaged over users; users whose relevant set is empty are skipped and counted.
A relevant item that is also masked (history with ``exclude_history``, or outside ``candidates``)
can never be hit but still counts in |rel|: dropping such items is the protocol's decision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

ACCURACY_METRICS = ("hr", "precision", "recall", "ndcg", "mrr", "map")
TIE_METRIC = "cutoff_tie"  # a diagnostic, not an accuracy metric: see the module notes
ScoreFn = Callable[[np.ndarray, list[np.ndarray]], torch.Tensor]


@dataclass
class EvalInputs:
    """What to rank for whom.

    history: per user, the input item indices in time order (what the model sees; masked from the
    ranking when ``exclude_history``). relevant: per user, the items that count as hits.
    candidates: if given, only these items are ranked for that user (the ``sampled:N`` protocol).
    mask: if given, the items set to -inf for each user when ``exclude_history`` instead of the history
    (RecBole masks the history minus the user's test items, so a repeat stays rankable).
    stage_users / dropped: the protocol's accounting, so that a report can say how many of the stage's users
    were evaluated and why the others were not ({reason: count}; the users above are the evaluated ones).
    """

    n_items: int
    users: np.ndarray
    history: list[np.ndarray]
    relevant: list[np.ndarray]
    exclude_history: bool = True
    candidates: list[np.ndarray] | None = None
    mask: list[np.ndarray] | None = None
    stage_users: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        n = len(self.users)
        if len(self.history) != n or len(self.relevant) != n:
            raise ValueError("users, history and relevant must have the same length")
        if self.candidates is not None and len(self.candidates) != n:
            raise ValueError("candidates must have one entry per user")
        if self.mask is not None and len(self.mask) != n:
            raise ValueError("mask must have one entry per user")

    def masked(self, i: int) -> np.ndarray:
        """The items user i cannot be recommended when ``exclude_history``."""
        return self.history[i] if self.mask is None else self.mask[i]


@dataclass
class EvalResult:
    """Averaged metrics (``rows``) plus per-user values for significance tests and debugging."""

    rows: list[dict]
    per_user: dict[str, np.ndarray]
    users: np.ndarray  # the evaluated users, in the order of the per-user arrays
    n_users: int
    skipped_users: int
    seconds: float
    users_per_second: float = field(init=False)

    def __post_init__(self) -> None:
        self.users_per_second = self.n_users / self.seconds if self.seconds > 0 else float("inf")

    def value(self, metric: str, k: int | None = None) -> float:
        """The averaged value of one metric, e.g. ``result.value("ndcg", 10)``."""
        for row in self.rows:
            if row["metric"] == metric and row["k"] == k:
                return row["value"]
        raise KeyError(f"{metric}@{k}")


# ---------------------------------------------------------------------------------------------
# batched evaluator


def _set_masked(rows_scores: torch.Tensor, rows: torch.Tensor, masked: torch.Tensor, shape) -> torch.Tensor:
    """``rows_scores``, a copy of the rows ``rows`` of a matrix of ``shape``, with the entries of ``masked`` (flat
    keys row * n_items + item of that matrix) in those rows set to -inf."""
    where = torch.full((shape[0],), -1, dtype=torch.long, device=rows.device)
    where[rows] = torch.arange(len(rows), device=rows.device)
    row_of = where[masked // shape[1]]
    hit = row_of >= 0
    rows_scores[row_of[hit], masked[hit] % shape[1]] = -math.inf
    return rows_scores


def _topk_values(scores: torch.Tensor, m: int, masked: torch.Tensor | None = None,
                 chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` of ``scores`` with the ``masked`` entries (sorted flat keys row * n + item) at -inf: the same
    values, best first; among equal values, any indices. ``scores`` is not written to.

    Two levels when the rows are long: the m best values lie in the m chunks with the highest maxima (an item
    above the m-th highest chunk maximum is in a chunk ranked above it; the chosen maxima themselves are m items
    at least that high), so only those chunks and the ragged tail are ranked, not the whole row. The maxima are
    taken over the unmasked scores (the few chunks holding a masked item are redone), so the masked matrix is
    never built. A NaN makes its chunk's maximum NaN, which topk ranks first, so NaN still reaches the result.
    """
    b, n = scores.shape
    n_chunks = n // chunk
    rows = torch.arange(b, device=scores.device)
    if n_chunks < 4 * m:  # few chunks: ranking the chosen ones would be most of the row anyway
        if masked is not None:
            scores = _set_masked(scores.clone(), rows, masked, scores.shape)
        return torch.topk(scores, m, dim=1)
    body = scores[:, : n_chunks * chunk].reshape(b, n_chunks, chunk)  # a view where rows are contiguous
    tail = scores[:, n_chunks * chunk :].clone()
    maxima = body.amax(dim=2)
    redone = None
    if masked is not None and len(masked):
        item = masked % n
        in_body = item < n_chunks * chunk
        tail[(masked // n)[~in_body], item[~in_body] - n_chunks * chunk] = -math.inf
        chunk_of = (masked // n * n_chunks + item // chunk)[in_body]  # flat chunk id of each masked item
        redone = torch.unique(chunk_of) if len(chunk_of) else None
    if redone is not None:
        blocks = body[redone // n_chunks, redone % n_chunks]  # copies of the chunks that hold a masked item
        blocks[torch.searchsorted(redone, chunk_of), item[in_body] % chunk] = -math.inf
        maxima.view(-1)[redone] = blocks.amax(dim=1)
    best_chunks = torch.topk(maxima, m, dim=1).indices
    chosen = body[rows[:, None], best_chunks]  # [b, m, chunk] copies
    if redone is not None:
        flat = rows[:, None] * n_chunks + best_chunks
        at = torch.searchsorted(redone, flat).clamp(max=len(redone) - 1)
        is_redone = redone[at] == flat
        chosen[is_redone] = blocks[at[is_redone]]
    candidates = torch.cat([chosen.reshape(b, m * chunk), tail], dim=1)
    vals, pos = torch.topk(candidates, m, dim=1)
    from_body = best_chunks.gather(1, (pos // chunk).clamp(max=m - 1)) * chunk + pos % chunk
    return vals, torch.where(pos < m * chunk, from_body, pos - m * chunk + n_chunks * chunk)


def deterministic_topk(scores: torch.Tensor, k: int,
                       masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row, best first, equal scores ordered by lower item index. Returns (indices, scores).

    ``masked``: optional sorted flat keys row * n_items + item of entries ranked as -inf (``scores`` itself is
    not written to, and no masked copy of it is made).
    ``torch.topk`` picks an arbitrary subset among ties at the k-th value. It is asked for one extra
    item: where the (k+1)-th score equals the k-th, ties cross the boundary and that row is redone
    as everything strictly above the k-th value plus the lowest-index items equal to it. No full sort.
    """
    n = scores.shape[1]
    k = min(k, n)
    vals, idx = _topk_values(scores, min(k + 1, n), masked)
    crossing = vals[:, k] == vals[:, k - 1] if n > k else torch.zeros_like(vals[:, 0], dtype=torch.bool)
    vals, idx = vals[:, :k], idx[:, :k].clone()
    if bool(crossing.any()):
        rows = crossing.nonzero().squeeze(1)
        s, t = scores[rows], vals[rows, -1:]
        if masked is not None:
            s = _set_masked(s, rows, masked, scores.shape)
        above = s > t
        need = k - above.sum(dim=1, keepdim=True)
        tied = s == t
        take = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= need))
        idx[rows] = take.nonzero()[:, 1].view(-1, k)  # nonzero is row-major: ascending item index
    # Order inside the top-k: sort by index, then stable sort by score, so ties stay index-ordered.
    idx = idx.sort(dim=1).values
    vals, order = _gather_masked(scores, idx, masked).sort(dim=1, descending=True, stable=True)
    return idx.gather(1, order), vals


def _gather_masked(scores: torch.Tensor, idx: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """scores.gather(1, idx) with the ``masked`` entries at -inf."""
    vals = scores.gather(1, idx)
    if masked is not None and len(masked):
        keys = torch.arange(len(idx), device=idx.device)[:, None] * scores.shape[1] + idx
        at = torch.searchsorted(masked, keys).clamp(max=len(masked) - 1)
        vals = vals.masked_fill(masked[at] == keys, -math.inf)
    return vals


def _flat_index(arrays: Sequence[np.ndarray], n_items: int, device) -> torch.Tensor:
    """Positions row * n_items + item in a row-major [len(arrays), n_items] matrix; sorted when
    each array is sorted."""
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), [len(a) for a in arrays])
    items = np.concatenate([np.zeros(0, dtype=np.int64), *(np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays)])
    if len(items) and (items.min() < 0 or items.max() >= n_items):  # would silently hit another row
        raise ValueError(f"item index out of range [0, {n_items})")
    return torch.as_tensor(rows * n_items + items, device=device)


def _call_score_fn(score_fn: ScoreFn, inputs: EvalInputs, sel: np.ndarray) -> torch.Tensor:
    raw = torch.as_tensor(score_fn(inputs.users[sel], [inputs.history[i] for i in sel])).detach()
    if raw.shape != (len(sel), inputs.n_items):
        expected = (len(sel), inputs.n_items)
        raise ValueError(f"score_fn returned shape {tuple(raw.shape)}, expected {expected}")
    return raw


def _masked_copy(raw: torch.Tensor, inputs: EvalInputs, sel: np.ndarray, buffer: torch.Tensor) -> torch.Tensor:
    """``raw`` copied into ``buffer`` with the masked items set to -inf. The buffer is reused across
    batches: no fresh pages to fault in, and score_fn's output (maybe a cached or expanded tensor)
    is never written to."""
    scores = buffer[: len(sel)]
    scores.copy_(raw)
    # Write through the flat view: index_fill_ is much cheaper than 2-D advanced-index assignment.
    flat = scores.view(-1)
    if inputs.candidates is not None:
        keep = _flat_index([inputs.candidates[i] for i in sel], inputs.n_items, scores.device)
        kept = flat[keep]
        flat.fill_(-math.inf)
        flat.index_copy_(0, keep, kept)
    if inputs.exclude_history:
        masked = _flat_index([inputs.masked(i) for i in sel], inputs.n_items, scores.device)
        flat.index_fill_(0, masked, -math.inf)
    return scores


def _prefix_metrics(
    hit: torch.Tensor, valid: torch.Tensor, n_rel: torch.Tensor, dist, info
) -> dict[str, torch.Tensor]:
    """Every per-user metric at every cut-off 1..K at once, as [B, K] tensors (column k-1 = @k).

    hit, valid: [B, K] bool over the ranked slots; n_rel: [B] relevant-set sizes; dist: optional
    [B, K, K] pairwise distances of the ranked items; info: optional [B, K] self-information.
    Built from cumulative sums so that all cut-offs cost one pass.
    """
    h = hit.double()
    k_max = h.shape[1]
    ranks = torch.arange(1, k_max + 1, dtype=h.dtype, device=h.device)
    discount = 1.0 / torch.log2(ranks + 1)
    hits = h.cumsum(dim=1)
    ideal_n = torch.minimum(n_rel[:, None], ranks.long())  # min(|rel|, k)
    idcg = discount.cumsum(dim=0)[ideal_n - 1]
    out = {
        "hr": (hits > 0).double(),
        "precision": hits / ranks,
        "recall": hits / n_rel[:, None],
        "ndcg": (h * discount).cumsum(dim=1) / idcg,
        "mrr": (h / ranks).cummax(dim=1).values,  # 1/rank decreases: the running max is the first hit's
        "map": (hits / ranks * h).cumsum(dim=1) / ideal_n,
    }
    n_valid = valid.double().cumsum(dim=1)
    if dist is not None:
        # sum over pairs i < j < k of dist, for every k: column sums of the strict upper triangle
        upper = torch.ones(k_max, k_max, dtype=torch.bool, device=h.device).triu(diagonal=1)
        pair_ok = valid[:, :, None] & valid[:, None, :] & upper
        pair_sum = (dist * pair_ok).sum(dim=1).cumsum(dim=1)
        n_pairs = n_valid * (n_valid - 1) / 2
        out["diversity"] = torch.where(n_pairs > 0, pair_sum / n_pairs.clamp(min=1), torch.nan)
    if info is not None:
        total = (info * valid).cumsum(dim=1)
        out["novelty"] = torch.where(n_valid > 0, total / n_valid.clamp(min=1), torch.nan)
    return out


def _self_information(train_counts: np.ndarray, n_items: int) -> np.ndarray:
    counts = np.asarray(train_counts, dtype=np.float64)
    return -np.log2((counts + 1.0) / (counts.sum() + n_items))


def _category_codes(item_categories) -> np.ndarray:
    return np.unique(np.asarray(item_categories), return_inverse=True)[1].reshape(-1)


def _beyond_accuracy_kinds(item_vectors, item_categories, train_counts) -> list[str]:
    kinds = []
    if item_vectors is not None or item_categories is not None:
        kinds.append("diversity")
    if train_counts is not None:
        kinds.append("novelty")
    return kinds


def _summarise(per_user: dict[str, np.ndarray], covered: dict[int, int], ks, kinds, n_items) -> list[dict]:
    rows = []
    for metric in (*ACCURACY_METRICS, "coverage", *kinds, TIE_METRIC):
        for k in ks:
            if metric == "coverage":
                value = covered[k] / n_items
            else:
                values = per_user[f"{metric}@{k}"]
                # diversity/novelty are undefined for too-short lists: average over defined ones
                defined = values[~np.isnan(values)]
                value = float(defined.mean()) if len(defined) else float("nan")
            rows.append({"metric": metric, "k": int(k), "value": float(value)})
    return rows


def evaluate(
    score_fn: ScoreFn,
    inputs: EvalInputs,
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 256,
    item_vectors: np.ndarray | torch.Tensor | None = None,
    item_categories: np.ndarray | None = None,
    train_counts: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Rank the whole catalog for every user, in batches, and compute the metrics in the module docstring.

    ``score_fn(users, history) -> Tensor[B, n_items]``: higher is better, -inf means never
    recommend, NaN raises. Memory is score_fn's output (the history mask is applied inside the
    top-k, never to a copy of it; with ``candidates`` or integer scores, one reused ``[batch_size, n_items]``
    buffer), whatever the number of users. Diversity uses ``item_vectors`` when given, else
    ``item_categories``; novelty needs ``train_counts``; each is skipped when its input is None.
    """
    start = time.perf_counter()
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"cut-offs must be >= 1, got {ks}")
    k_max = ks[-1]
    n_items = inputs.n_items
    # each user's relevant items, sorted and deduplicated, in one np.unique over row * n_items + item
    keys = np.unique(_flat_index(inputs.relevant, n_items, "cpu").numpy())
    counts = np.bincount(keys // n_items, minlength=len(inputs.users))
    relevant_sets = np.split(keys % n_items, np.cumsum(counts)[:-1])
    keep = counts > 0
    selected = np.flatnonzero(keep)
    kinds = _beyond_accuracy_kinds(item_vectors, item_categories, train_counts)

    vectors = categories = self_info = None
    if item_vectors is not None:
        vectors = torch.nn.functional.normalize(torch.as_tensor(item_vectors).double().to(device), dim=1)
    elif item_categories is not None:
        categories = torch.as_tensor(_category_codes(item_categories), device=device)
    if train_counts is not None:
        self_info = torch.as_tensor(_self_information(train_counts, n_items), device=device)

    # best (lowest) slot at which each item was recommended to anyone: coverage@k = #items with slot < k
    best_slot = torch.full((n_items,), k_max, dtype=torch.long, device=device)
    slots = torch.arange(k_max, device=device).expand(batch_size, -1)
    columns = torch.as_tensor(ks, device=device) - 1
    chunks: dict[str, list[torch.Tensor]] = {}
    buffer = None
    for lo in range(0, len(selected), batch_size):
        sel = selected[lo : lo + batch_size]
        raw = _call_score_fn(score_fn, inputs, sel)
        masked = None
        if inputs.candidates is None and raw.is_floating_point():  # the mask goes to the top-k, no copy
            scores = raw.to(device)
            if inputs.exclude_history:
                masked = _flat_index([inputs.masked(i) for i in sel], n_items, device).sort().values
        else:
            if buffer is None:  # integer scores become float64 so that -inf can be written
                dtype = raw.dtype if raw.is_floating_point() else torch.float64
                buffer = torch.empty(min(batch_size, len(selected)), n_items, dtype=dtype, device=device)
            scores = _masked_copy(raw, inputs, sel, buffer)
        del raw
        # One item more than K: whether the item after each cut-off ties with the last one in the list.
        top, top_scores = deterministic_topk(scores, k_max + 1, masked)
        del scores
        if bool(torch.isnan(top_scores).any()):  # topk ranks NaN above everything, so this sees any
            raise ValueError("score_fn returned NaN scores")
        head = top_scores[:, :k_max]
        after = torch.nn.functional.pad(top_scores[:, 1:], (0, head.shape[1] + 1 - top_scores.shape[1]),
                                        value=-math.inf)
        tie = (head > -math.inf) & (head == after)
        top, top_scores = top[:, :k_max], top_scores[:, :k_max]
        valid = top_scores > -math.inf
        if top.shape[1] < k_max:  # catalog smaller than K: pad with empty slots
            pad = k_max - top.shape[1]
            top = torch.nn.functional.pad(top, (0, pad))
            valid = torch.nn.functional.pad(valid, (0, pad), value=False)
            tie = torch.nn.functional.pad(tie, (0, pad), value=False)

        # A hit is a (row, item) pair of the top-k that also occurs among the relevant pairs;
        # the keys row * n_items + item of the relevant pairs come out sorted, so binary search them.
        relevant = [relevant_sets[i] for i in sel]
        rel_keys = _flat_index(relevant, n_items, device)
        top_keys = torch.arange(len(sel), device=device)[:, None] * n_items + top
        found = rel_keys[torch.searchsorted(rel_keys, top_keys).clamp(max=len(rel_keys) - 1)]
        hit = (found == top_keys) & valid
        n_rel = torch.as_tensor([len(r) for r in relevant], device=device)

        dist = None
        if vectors is not None:
            v = vectors[top]
            dist = 1.0 - v @ v.transpose(1, 2)
        elif categories is not None:
            c = categories[top]
            dist = (c[:, :, None] != c[:, None, :]).double()
        info = self_info[top] if self_info is not None else None

        best_slot.scatter_reduce_(0, top[valid], slots[: len(sel)][valid], reduce="amin")
        for name, value in _prefix_metrics(hit, valid, n_rel, dist, info).items():
            chunks.setdefault(name, []).append(value[:, columns].cpu())
        chunks.setdefault(TIE_METRIC, []).append(tie[:, columns].double().cpu())

    per_user = {}
    for name in (*ACCURACY_METRICS, *kinds, TIE_METRIC):
        table = torch.cat(chunks[name]).numpy() if chunks else np.zeros((0, len(ks)))
        per_user.update({f"{name}@{k}": table[:, j] for j, k in enumerate(ks)})
    covered = {k: int((best_slot < k).sum()) for k in ks}
    return EvalResult(
        rows=_summarise(per_user, covered, ks, kinds, n_items),
        per_user=per_user,
        users=inputs.users[selected],
        n_users=len(selected),
        skipped_users=int((~keep).sum()),
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# reference implementation


def naive_evaluate(
    score_fn: ScoreFn,
    inputs: EvalInputs,
    ks: Sequence[int] = (5, 10, 20),
    item_vectors: np.ndarray | None = None,
    item_categories: np.ndarray | None = None,
    train_counts: np.ndarray | None = None,
) -> EvalResult:
    """Deliberately simple reference: one user at a time, a stable argsort, plain Python loops.

    Produces the same rows as ``evaluate``; used by the tests and the benchmark, never in the pipeline.
    """
    start = time.perf_counter()
    ks = sorted({int(k) for k in ks})
    kinds = _beyond_accuracy_kinds(item_vectors, item_categories, train_counts)
    vectors = None
    if item_vectors is not None:
        vectors = np.asarray(item_vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    categories = _category_codes(item_categories) if item_categories is not None else None
    self_info = _self_information(train_counts, inputs.n_items) if train_counts is not None else None

    per_user: dict[str, list[float]] = {f"{m}@{k}": [] for m in (*ACCURACY_METRICS, *kinds, TIE_METRIC) for k in ks}
    seen: dict[int, set] = {k: set() for k in ks}
    evaluated, skipped = [], 0
    for i, user in enumerate(inputs.users):
        rel = set(np.asarray(inputs.relevant[i]).tolist())
        if not rel:
            skipped += 1
            continue
        evaluated.append(user)
        scores = torch.as_tensor(score_fn(inputs.users[i : i + 1], [inputs.history[i]]))[0]
        scores = scores.double().cpu().numpy().copy()
        if np.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores")
        if inputs.candidates is not None:
            allowed = np.full(inputs.n_items, False)
            allowed[np.asarray(inputs.candidates[i], dtype=np.int64)] = True
            scores[~allowed] = -np.inf
        if inputs.exclude_history:
            scores[np.asarray(inputs.masked(i), dtype=np.int64)] = -np.inf
        order = np.argsort(-scores, kind="stable")  # stable: equal scores keep catalog order

        for k in ks:
            top = [int(item) for item in order[:k] if scores[item] > -np.inf]
            seen[k].update(top)
            hits = [1 if item in rel else 0 for item in top]
            n_hits = sum(hits)
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
            first = next((j + 1 for j, h in enumerate(hits) if h), None)
            ap, running = 0.0, 0
            for j, h in enumerate(hits):
                running += h
                ap += h * running / (j + 1)
            tied = len(top) == k and k < len(order) and scores[order[k]] == scores[order[k - 1]]
            values = {
                TIE_METRIC: float(tied),
                "hr": float(n_hits > 0),
                "precision": n_hits / k,
                "recall": n_hits / len(rel),
                "ndcg": dcg / idcg,
                "mrr": 1.0 / first if first else 0.0,
                "map": ap / min(len(rel), k),
            }
            if "diversity" in kinds:
                pairs = [(a, b) for a in top for b in top if a != b]
                if vectors is not None:
                    dists = [1.0 - float(vectors[a] @ vectors[b]) for a, b in pairs]
                else:
                    dists = [float(categories[a] != categories[b]) for a, b in pairs]
                values["diversity"] = sum(dists) / len(dists) if dists else float("nan")
            if "novelty" in kinds:
                values["novelty"] = sum(self_info[t] for t in top) / len(top) if top else float("nan")
            for name, value in values.items():
                per_user[f"{name}@{k}"].append(value)

    arrays = {key: np.asarray(values, dtype=np.float64) for key, values in per_user.items()}
    covered = {k: len(seen[k]) for k in ks}
    return EvalResult(
        rows=_summarise(arrays, covered, ks, kinds, inputs.n_items),
        per_user=arrays,
        users=np.asarray(evaluated, dtype=np.int64),
        n_users=len(evaluated),
        skipped_users=skipped,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# protocols and pointwise metrics


def sampled_candidates(inputs: EvalInputs, n_negatives: int, seed: int) -> list[np.ndarray]:
    """Per user: the relevant items plus ``n_negatives`` items *per relevant item* (RecBole's ``uni100``:
    each positive draws its own negatives, a user's candidate set is their union) drawn uniformly without
    replacement from the items outside history ∪ relevant (all of them if fewer remain). Sorted item indices.

    This is the ``sampled:N`` protocol; it exists only to show how sampling inflates the numbers.
    """
    rng = np.random.default_rng(seed)
    out = []
    for hist, rel in zip(inputs.history, inputs.relevant):
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        excluded = np.union1d(np.asarray(hist, dtype=np.int64), rel)
        n_free = inputs.n_items - len(excluded)
        ranks = np.sort(rng.choice(n_free, size=min(n_negatives * max(len(rel), 1), n_free), replace=False))
        # Map the r-th free item to its index: add the number of excluded items at or before it.
        free_before = excluded - np.arange(len(excluded))
        negatives = ranks + np.searchsorted(free_before, ranks, side="right")
        out.append(np.union1d(rel, negatives))
    return out


def auc_accuracy_fpr(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """Pointwise classification metrics for rating/click models (``mmrec_dlrm``).

    - ``auc``: ROC AUC as the Mann-Whitney statistic P(score_pos > score_neg) + 0.5 P(equal),
      from ranks with ties averaged; NaN when only one class is present.
    - ``accuracy``: share of examples where [score >= threshold] equals the label.
    - ``fpr``: false-positive rate, share of negatives with score >= threshold; NaN without negatives.
    """
    labels = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError("labels and scores must have the same length")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos

    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # average rank (1-based) of each group of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(group_rank, ends - starts)
    if n_pos and n_neg:
        auc = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    else:
        auc = float("nan")

    predicted = scores >= threshold
    accuracy = float((predicted == labels).mean()) if len(labels) else float("nan")
    fpr = float(predicted[~labels].mean()) if n_neg else float("nan")
    return {"auc": float(auc), "accuracy": accuracy, "fpr": fpr}
