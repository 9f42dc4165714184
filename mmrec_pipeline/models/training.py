"""What iterative models share: one training loop (`Trainer`), validation with the shared evaluator, early
stopping, seeding, and the sequence windows/padding with one ignore index.

A model that trains iteratively gives the `Trainer` three things (RecBole's `Trainer` idea):
- `train_batches(gen)`: one epoch's batches as a list (anything `batch_loss` understands, typically index
  tensors), shuffled with the seeded CPU generator `gen`; it also puts the model's modules in training mode;
- `batch_loss(batch) -> (loss, n)`: the mean loss over the batch's `n` training items (examples, targets, tokens;
  what items/s counts; a Python int, so that counting needs no device sync);
- `train_state()` / `load_train_state(state)` (optional; default the checkpoint's `state_dict`): what early
  stopping keeps of the best epoch.
The trainer does the rest: AdamW (its fused kernel where torch has one: `fusable`; or lazy Adam,
`optimizer="sparse_adam"`, for embedding tables with sparse gradients) with a warm-up schedule
(`transformers.get_scheduler`), gradient accumulation and clipping, epochs or a time budget, validation every
`eval_every` epochs, early stopping with the best state restored, and progress (loss, items/s, ETA) to one logger.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from mmrec_pipeline.compute import Compute, Progress, logger
from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.metrics import evaluate
from mmrec_pipeline.evaluation.protocols import protocol_masking, subsample

IGNORE = -100  # target of positions that are not trained (padding, unmasked tokens); torch's and HF's default


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Validator:
    """NDCG@k (or `metric`@k: recall, …) on the valid stage through the shared evaluator (the same code as the
    test report), masked as the protocol masks `model`'s test ranking (`recbole`: nothing for a sequential model;
    see `protocol_masking`); over `max_users` sampled valid users, every one when `max_users` is 0."""

    def __init__(self, data: RecDataset, k: int = 10, max_users: int = 3000, seed: int = 0, model=None,
                 metric: str = "ndcg"):
        self.k, self.metric = k, metric
        inputs = protocol_masking(data.eval_inputs("valid"), data, model)
        self.inputs = subsample(inputs, max_users, seed) if max_users else inputs

    def __call__(self, score_fn) -> float:
        if len(self.inputs.users) == 0:
            return float("nan")
        with torch.no_grad():
            result = evaluate(score_fn, self.inputs, ks=(self.k,))
        return next(r["value"] for r in result.rows if r["metric"] == self.metric and r["k"] == self.k)


class EarlyStopping:
    """Keeps the best state seen; `step` returns True when `patience` checks passed without improvement."""

    def __init__(self, patience: int = 3):
        self.patience, self.best, self.best_epoch, self.best_state, self.bad = patience, -np.inf, -1, None, 0

    def step(self, value: float, epoch: int, state: dict) -> bool:
        if not np.isfinite(value):  # no validation users: keep the latest state
            self.best_state, self.best_epoch = copy.deepcopy(state), epoch
            return False
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            return False
        self.bad += 1
        return self.bad >= self.patience


# ------------------------------------------------------------------------------------------------------
# The training loop


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How the `Trainer` optimises; `of(config)` reads the fields of the same name from a model's config."""

    epochs: int = 10  # upper bound; early stopping usually ends sooner
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    adam_beta2: float = 0.999  # decay of Adam's second moment (transformer recipes often use 0.98)
    # adamw | sparse_adam: lazy Adam (torch.optim.SparseAdam) for parameters whose gradients are sparse (embeddings
    # with sparse=True): a step updates only the rows a batch used, so an epoch costs the rows trained on, not
    # (steps x table size). It has no weight decay: such a model puts its L2 in the loss.
    optimizer: str = "adamw"
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    schedule: str = "constant"  # after warm-up: constant | linear | cosine (decay to 0 at the last epoch's end)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 0.0  # clip the gradient norm (0 = no clipping)
    eval_every: int = 1  # epochs between validation checks (and always after the last one)
    patience: int = 3  # validation checks without improvement before stopping
    # the early-stopping value: `valid_metric`@`valid_k` over `valid_users` sampled valid users (0: all of them, as
    # RecTools validates); ndcg | recall (RecTools' transformer benchmark stops on Recall@10)
    valid_users: int = 3000
    valid_metric: str = "ndcg"
    valid_k: int = 10
    max_train_seconds: float = 0.0  # time budget for training (0 = none): the epoch in progress ends, is validated
    seed: int = 0

    @classmethod
    def of(cls, config, **overrides) -> TrainSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}
        return cls(**{k: v for k, v in {**values, **overrides}.items() if v is not None})


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether AdamW can run its fused kernel: one pass over each parameter instead of the ~8 of the per-tensor
    loop that is torch's default on CPU, the same update (to 2e-7) several times faster where the update
    dominates a step, as for large embedding tables (`benchmarks/optimizer.py`; docs/BENCHMARKS.md, "Scale").
    torch fuses floating-point parameters with dense gradients (every model's here) on CPU and CUDA."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


class Trainer:
    """One training loop for every iterative model (see the module doc for what a model provides)."""

    def __init__(self, settings: TrainSettings, compute: Compute | None = None, log=None, name: str = "model",
                 unit: str = "items"):
        """`name` and `unit` (what `batch_loss` counts: targets, triples, examples, …) label the progress lines."""
        if settings.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"{name}: schedule must be constant, linear or cosine, got '{settings.schedule}'")
        if settings.optimizer not in ("adamw", "sparse_adam"):
            raise ValueError(f"{name}: optimizer must be adamw or sparse_adam, got '{settings.optimizer}'")
        if settings.optimizer == "sparse_adam" and settings.weight_decay:
            raise ValueError(f"{name}: sparse_adam has no weight decay; put the L2 penalty in the loss")
        self.settings, self.compute, self.name, self.unit = settings, compute or Compute(device="cpu"), name, unit
        self.log = logger(log)

    def fit(self, model, params, data: RecDataset | None = None, validate: Callable[[], float] | None = None,
            metric: str | None = None) -> dict:
        """Train `model`'s `params`; `validate` returns the early-stopping value (higher is better), by default the
        shared `Validator` on `data` with `model.score` (`valid_<valid_metric>@<valid_k>` over `valid_users`); `metric`
        names it (default `valid_ndcg@10`, or the settings' metric for the default validator). Returns seconds, epochs, best_epoch, curve (one row per
        epoch: loss, train_seconds and `metric` where validated), `best_<metric>` and training throughput."""
        s = self.settings
        if s.valid_metric not in ("ndcg", "recall"):
            raise ValueError(f"{self.name}: valid_metric must be ndcg or recall, got '{s.valid_metric}'")
        if validate is None:
            validator = Validator(data, k=s.valid_k, model=model, max_users=s.valid_users, metric=s.valid_metric)
            validate = lambda: validator(model.score)
            metric = metric or f"valid_{s.valid_metric}@{s.valid_k}"
        metric = metric or "valid_ndcg@10"
        params = [p for p in params if p.requires_grad]
        if s.optimizer == "sparse_adam":
            opt = torch.optim.SparseAdam(params, lr=s.lr, betas=(0.9, s.adam_beta2))
        else:
            opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, s.adam_beta2), weight_decay=s.weight_decay,
                                    fused=fusable(params))
        gen = torch.Generator().manual_seed(s.seed)  # shuffling, masking, negatives: on the CPU, so runs repeat
        stopper, curve, sched = EarlyStopping(s.patience), [], None
        start, train_seconds, items_done, stopped_by = time.perf_counter(), 0.0, 0, "epochs"
        train_state = getattr(model, "train_state", model.state_dict)
        for epoch in range(1, s.epochs + 1):
            batches = model.train_batches(gen)
            if sched is None:  # the schedule's length needs the number of steps per epoch
                sched = self._schedule(opt, math.ceil(len(batches) / s.grad_accum) * s.epochs)
            epoch_start, total, count, out_of_time = time.perf_counter(), 0.0, 0, False
            progress = Progress(f"{self.name} (epoch {epoch}) batches", len(batches), self.log, every_s=30)
            for step, batch in enumerate(batches):
                with self.compute.autocast():
                    loss, n = model.batch_loss(batch)
                last = step + 1 == len(batches) or (
                    s.max_train_seconds and train_seconds + time.perf_counter() - epoch_start >= s.max_train_seconds)
                accumulate_step(loss, step, bool(last), s.grad_accum, params, s.max_grad_norm, opt, sched)
                total, count = total + loss.detach().float() * n, count + n  # on the device: no sync per step
                progress.update(1, lambda t=total, c=count: f"loss {float(t) / max(c, 1):.4f}")
                if last and step + 1 < len(batches):
                    out_of_time = True
                    break
            seconds = time.perf_counter() - epoch_start
            train_seconds, items_done = train_seconds + seconds, items_done + count
            row = {"epoch": epoch, "loss": float(total) / max(count, 1), "train_seconds": seconds}
            out_of_time = out_of_time or bool(s.max_train_seconds and train_seconds >= s.max_train_seconds)
            if epoch % s.eval_every == 0 or epoch == s.epochs or out_of_time:
                row[metric] = validate()
            curve.append(row)
            stop = metric in row and stopper.step(row[metric], epoch, train_state())
            self._log_epoch(row, metric, stopper, items_done / max(train_seconds, 1e-9),
                            (time.perf_counter() - start) / epoch * (s.epochs - epoch))
            if stop or out_of_time:
                stopped_by = "patience" if stop else "time_budget"
                break
        if stopper.best_state is not None:
            getattr(model, "load_train_state", model.load_state_dict)(stopper.best_state)
        best = float(stopper.best) if np.isfinite(stopper.best) else float("nan")  # nan: nothing validated
        return {"seconds": time.perf_counter() - start, "epochs": len(curve), "best_epoch": stopper.best_epoch,
                "stopped_by": stopped_by, "curve": curve, f"best_{metric}": best, "train_seconds": train_seconds,
                f"{self.unit}_per_second": items_done / max(train_seconds, 1e-9),
                "trainable_parameters": sum(p.numel() for p in params), "device": str(self.compute.torch_device)}

    def _schedule(self, opt, total_steps: int):
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[self.settings.schedule]
        return get_scheduler(name, opt, num_warmup_steps=self.settings.warmup_steps,
                             num_training_steps=max(total_steps, 1))

    def _log_epoch(self, row: dict, metric: str, stopper: EarlyStopping, rate: float, eta: float) -> None:
        label = metric.replace("_", " ").replace("ndcg", "NDCG").replace("auc", "AUC")  # valid NDCG@10
        value, until = row.get(metric), " (early stopping may end sooner)"
        if value is None:  # an epoch between validation checks
            valid = ""
        elif np.isfinite(value):
            valid = f", {label} {value:.4f} (best {stopper.best:.4f} @ {stopper.best_epoch})"
        else:  # nothing to validate on (a refit on every interaction): EarlyStopping keeps the latest epoch
            valid, until = ", no validation users: every epoch runs", ""
        self.log.info(f"{self.name} epoch {row['epoch']}/{self.settings.epochs}: loss {row['loss']:.4f}{valid}, "
                      f"{rate:,.0f} {self.unit}/s, ETA ≤ {eta:.0f}s{until}")


def accumulate_step(loss: torch.Tensor, step: int, last: bool, grad_accum: int, params, max_grad_norm: float,
                    optimizer, scheduler) -> None:
    """Backward of one micro-batch; every `grad_accum` micro-batches (and after an epoch's `last` one) clip the
    gradient norm, step the optimizer and the schedule, and reset the gradients."""
    (loss / grad_accum).backward()
    if (step + 1) % grad_accum == 0 or last:
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------------
# Sequences: training windows, padding and length-grouped batches (one pad convention, one ignore index)


def windows(sequences: list[np.ndarray], length: int, stride: int, pad: int, right: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Cut each sequence (of at least 2 items) from its end into windows of at most `length` items, `stride`
    apart, padded with `pad` on the left (or the right). Returns the windows [n, length] and, per window, how many
    of its leading next-item targets to skip: a window that does not start the sequence trains only its last
    `stride` targets, which have at least `length - 1 - stride` items of context; the skipped ones are trained in
    an older window, so every transition is a target exactly once per epoch (stride = length - 1: windows overlap
    by one item and nothing is skipped)."""
    rows, skip = [], []
    for seq in sequences:
        end = len(seq)
        while end >= 2:  # a window needs two items for one target
            start = max(0, end - length)
            rows.append(seq[start:end])
            skip.append(0 if start == 0 else max(0, length - 1 - stride))
            if start == 0:
                break
            end -= stride
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        if right:
            out[i, :len(r)] = r
        else:
            out[i, length - len(r):] = r
    return out, np.asarray(skip, dtype=np.int64)


def pad_histories(history: list[np.ndarray], length: int, pad: int, right: bool = False,
                  suffix: int | None = None) -> torch.Tensor:
    """The last `length` items of each history (room left for `suffix` when given), padded on the left (the most
    recent item in the last column) or on the right (every row starts at position 0): [B, length]."""
    keep = length - (suffix is not None)
    out = torch.full((len(history), length), pad, dtype=torch.long)
    for i, h in enumerate(history):
        h = np.array(h[-keep:] if keep else h[:0], dtype=np.int64)  # a copy: inputs may be read-only
        if len(h):
            if right:
                out[i, :len(h)] = torch.from_numpy(h)
            else:
                out[i, keep - len(h):keep] = torch.from_numpy(h)
    if suffix is not None:
        out[:, -1] = suffix
    return out


def length_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator, pool: int = 32) -> list:
    """Shuffled batches of similar length: shuffle, sort by length inside pools of `pool` batches, cut into
    batches, shuffle the batches. Trimmed batches then carry little padding (a 3x saving when most sequences
    are much shorter than max_len) while every epoch still sees a different random grouping."""
    perm = torch.randperm(len(lengths), generator=gen)
    batches = []
    for chunk in perm.split(batch_size * pool):
        chunk = chunk[torch.sort(lengths[chunk], stable=True).indices]
        batches += list(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A random permutation of range(n) cut into batches of `batch_size` indices."""
    return list(torch.randperm(n, generator=gen).split(batch_size))


def trim(x: torch.Tensor, *others: torch.Tensor, pad: int) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row of left-padded `x` (and the same columns of `others`)."""
    real = (x != pad).any(0)
    first = int(real.nonzero()[0]) if bool(real.any()) else x.shape[1] - 1
    return (x[:, first:], *(o[:, first:] for o in others))
