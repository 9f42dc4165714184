"""What iterative models share: validation with the shared evaluator, early stopping, seeding."""

from __future__ import annotations

import copy
import random

import numpy as np
import torch

from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.metrics import EvalInputs, evaluate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subsample(inputs: EvalInputs, max_users: int, seed: int = 0) -> EvalInputs:
    """At most `max_users` users of `inputs` (validation during training need not see every user)."""
    if len(inputs.users) <= max_users:
        return inputs
    keep = np.sort(np.random.default_rng(seed).choice(len(inputs.users), max_users, replace=False))
    return EvalInputs(n_items=inputs.n_items, users=inputs.users[keep], history=[inputs.history[i] for i in keep],
                      relevant=[inputs.relevant[i] for i in keep], exclude_history=inputs.exclude_history)


class Validator:
    """NDCG@k on the valid stage through the shared evaluator (the same code as the test report)."""

    def __init__(self, data: RecDataset, k: int = 10, max_users: int = 3000, seed: int = 0):
        self.k = k
        self.inputs = subsample(data.eval_inputs("valid"), max_users, seed)

    def __call__(self, score_fn) -> float:
        if len(self.inputs.users) == 0:
            return float("nan")
        with torch.no_grad():
            result = evaluate(score_fn, self.inputs, ks=(self.k,))
        return next(r["value"] for r in result.rows if r["metric"] == "ndcg" and r["k"] == self.k)


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


def accumulate_step(loss: torch.Tensor, step: int, n_steps: int, grad_accum: int, params, max_grad_norm: float,
                    optimizer, scheduler) -> None:
    """Backward of one micro-batch; every `grad_accum` micro-batches (and after the last one) clip the gradient
    norm, step the optimizer and the schedule, and reset the gradients."""
    (loss / grad_accum).backward()
    if (step + 1) % grad_accum == 0 or step + 1 == n_steps:
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
