"""The one training loop (`training.Trainer`) on a toy least-squares model: early stopping restores the best
epoch's state, gradient accumulation equals the larger batch, AdamW runs fused, the time budget ends training,
progress is logged."""

import dataclasses
import logging

import pytest
import torch

from mmrec_pipeline.models import training
from mmrec_pipeline.models.training import Trainer, TrainSettings, shuffled_batches


class Toy:
    """y = X w on 64 fixed examples; batches are index tensors, the loss is the batch's mean squared error."""

    def __init__(self, batch_size: int = 16):
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.w = torch.zeros(4, requires_grad=True)
        self.batch_size, self.epochs_started = batch_size, 0

    def train_batches(self, gen):
        self.epochs_started += 1
        return shuffled_batches(len(self.y), self.batch_size, gen)

    def batch_loss(self, b):
        return ((self.x[b] @ self.w - self.y[b]) ** 2).mean(), len(b)

    def state_dict(self):
        return {"w": self.w.detach()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


def test_early_stopping_restores_the_best_epoch():
    toy, values, states = Toy(), iter([0.1, 0.5, 0.2, 0.3, 0.4]), []

    def validate():  # best at epoch 2, then two checks without improvement
        states.append(toy.w.detach().clone())
        return next(values)

    report = Trainer(TrainSettings(epochs=5, lr=0.05, patience=2)).fit(toy, [toy.w], validate=validate)
    assert report["epochs"] == 4 and report["best_epoch"] == 2 and report["best_valid_ndcg@10"] == 0.5
    assert torch.equal(toy.w.detach(), states[1])
    assert [r["epoch"] for r in report["curve"]] == [1, 2, 3, 4] and report["curve"][0]["loss"] > 0


def test_gradient_accumulation_equals_the_larger_batch():
    """Two accumulated half batches = one full batch of the same examples (the losses are means of equal halves)."""
    settings = TrainSettings(epochs=3, lr=0.05, max_grad_norm=10.0)
    big, small = Toy(batch_size=32), Toy(batch_size=16)
    small.train_batches = lambda gen: [b for big_b in shuffled_batches(64, 32, gen) for b in big_b.split(16)]
    Trainer(settings).fit(big, [big.w], validate=lambda: 0.0)
    Trainer(dataclasses.replace(settings, grad_accum=2)).fit(small, [small.w], validate=lambda: 0.0)
    torch.testing.assert_close(big.w, small.w)


def test_adamw_runs_fused_on_cpu_with_the_loops_update(monkeypatch):
    """The fused AdamW kernel (one pass per parameter; 7x faster on H&M-sized embeddings) where torch has one, and
    the same training as torch's default per-tensor loop."""
    assert training.fusable([torch.zeros(3, requires_grad=True)])
    assert not training.fusable([]) and not training.fusable([torch.zeros(3, device="meta")])
    settings = TrainSettings(epochs=3, lr=0.05, weight_decay=0.01)
    fused, loop, kernels = Toy(), Toy(), []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **kw: kernels.append(kw["fused"]) or adamw(*a, **kw))
    Trainer(settings).fit(fused, [fused.w], validate=lambda: 0.0)
    monkeypatch.setattr(training, "fusable", lambda params: False)
    Trainer(settings).fit(loop, [loop.w], validate=lambda: 0.0)
    assert kernels == [True, False]
    torch.testing.assert_close(fused.w, loop.w)


def test_time_budget_ends_training_and_validates_the_last_epoch():
    toy = Toy(batch_size=1)
    report = Trainer(TrainSettings(epochs=50, eval_every=10, max_train_seconds=1e-6)).fit(toy, [toy.w],
                                                                                           validate=lambda: 1.0)
    assert toy.epochs_started == 1 and report["epochs"] == 1 and "valid_ndcg@10" in report["curve"][0]


def test_settings_read_the_model_config_and_progress_is_logged(caplog):
    @dataclasses.dataclass
    class Config:
        lr: float = 0.1
        epochs: int = 2
        warmup_steps: int = 4
        hidden: int = 8  # not a training setting
        grad_accum: int | None = None  # unset: the trainer's default

    settings = TrainSettings.of(Config(), patience=7)
    assert (settings.lr, settings.epochs, settings.warmup_steps, settings.grad_accum, settings.patience) == \
        (0.1, 2, 4, 1, 7)
    with pytest.raises(ValueError, match="schedule"):
        Trainer(TrainSettings(schedule="steps"))
    toy = Toy()
    with caplog.at_level(logging.INFO, logger="train-test"):
        Trainer(settings, log=logging.getLogger("train-test"), name="toy", unit="rows").fit(toy, [toy.w],
                                                                                           validate=lambda: 0.0)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("toy epoch 2/2"))
    assert all(s in line for s in ("loss", "valid NDCG@10", "rows/s", "ETA", "early stopping may end sooner"))
    # Without validation users (a refit on every interaction) every epoch runs, and the line says so.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train-test"):
        report = Trainer(settings, log=logging.getLogger("train-test"), name="refit").fit(
            toy, [toy.w], validate=lambda: float("nan"))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("refit epoch 2/2"))
    assert report["epochs"] == 2 and "no validation users: every epoch runs" in line, line
    assert "nan" not in line and "early stopping" not in line, line


def test_bpr_mf_steps_touch_only_the_rows_of_their_batch(sample_dataset, monkeypatch):
    """BPR-MF's tables have sparse gradients and lazy Adam updates only the rows a step used, so an epoch's cost
    follows the training rows, not steps x table size."""
    from mmrec_pipeline.models.bpr_mf import BPRMF

    seen = {}

    def one_step(self, model, params, data=None, **kw):
        batch = model.train_batches(torch.Generator().manual_seed(0))[0][:8]
        before = [p.detach().clone() for p in params]
        model.batch_loss(batch)[0].backward()
        seen["sparse"] = [p.grad.is_sparse for p in params]
        torch.optim.SparseAdam(params, lr=0.1).step()
        seen["changed"] = set((params[0].detach() != before[0]).any(1).nonzero().flatten().tolist())
        seen["batch_users"] = set(model._users[batch].tolist())
        seen["optimizer"] = self.settings.optimizer
        return {"best_epoch": 0}

    monkeypatch.setattr(Trainer, "fit", one_step)
    BPRMF(batch_size=64).fit(sample_dataset, None, None)
    assert seen["optimizer"] == "sparse_adam" and all(seen["sparse"])
    assert seen["changed"] and seen["changed"] <= seen["batch_users"]


def test_sparse_adam_refuses_weight_decay():
    with pytest.raises(ValueError, match="sparse_adam has no weight decay"):
        Trainer(TrainSettings(optimizer="sparse_adam", weight_decay=0.1))
