"""What the report shows of a model's own recommendations, computed when its asset runs and saved beside each
variant's checkpoint (`DatasetView.report_facts`), so the report never loads a checkpoint. A module of its own:
model code versions hash it (it changes what a model asset writes), not the report's HTML and plots.

The users: seeded samples of the test users, EXAMPLE_USERS for example rows and REPORT_USERS for tables over users
(vq_bart's BERTScore)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmrec_pipeline.evaluation.protocols import protocol_masking, restrict_users, subsample
from mmrec_pipeline.storage import DatasetView, read_json_file

if TYPE_CHECKING:
    from mmrec_pipeline.data.dataset import RecDataset

REPORT_TOP_K = 5
EXAMPLE_USERS = 3
# test users vq_bart's section decodes and BERTScores per row: the cost of one variant (decode, two BERTScores)
# is in benchmarks/vq_bart.py, part `sample`
REPORT_USERS = 300


def top_items(model, inputs, k: int, batch_size: int = 256) -> list[list[int]]:
    """Each user's top-k items as the evaluator ranks them: `inputs` masked by the protocol's rule for the model,
    each user's masked items (`EvalInputs.masked`) excluded."""
    import torch

    from mmrec_pipeline.evaluation.metrics import deterministic_topk

    out = []
    for s in range(0, len(inputs.users), batch_size):
        rows = range(s, min(s + batch_size, len(inputs.users)))
        with torch.no_grad():
            scores = torch.as_tensor(model.score(inputs.users[s:s + batch_size],
                                                 inputs.history[s:s + batch_size])).float().clone()
        if inputs.exclude_history:
            for r, i in enumerate(rows):  # a copy: the masked items may be read-only
                scores[r, torch.from_numpy(np.array(inputs.masked(i), dtype=np.int64))] = -torch.inf
        out += deterministic_topk(scores, k)[0].tolist()
    return out


def report_users(data: RecDataset, max_users: int = REPORT_USERS, seed: int = 0) -> np.ndarray:
    """The test users whose top items a model's asset saves for the report: both seeded samples."""
    inputs = data.eval_inputs("test")
    return np.union1d(subsample(inputs, max_users, seed).users, subsample(inputs, EXAMPLE_USERS, seed).users)


def report_facts(model, data: RecDataset, max_users: int = REPORT_USERS) -> dict:
    """The trained model's top items for `report_users` (as the evaluator ranks them), plus what its class adds
    (`Recommender.report_facts`, e.g. vq_bart's generated texts): the report facts of one variant."""
    inputs = protocol_masking(restrict_users(data.eval_inputs("test"), report_users(data, max_users)), data, model)
    top = top_items(model, inputs, REPORT_TOP_K)
    users = [str(int(u)) for u in inputs.users]
    return {"top": dict(zip(users, top, strict=True)),
            **model.report_facts(dict(zip(users, inputs.history, strict=True)))}


def read_report_facts(artifacts: DatasetView | Path, model: str, variant: str) -> dict:
    """A variant's report facts (`artifacts`: the dataset's view, or its lake folder); a clear error when its
    asset predates them (re-materialize it)."""
    path = DatasetView.at(artifacts).report_facts(model, variant)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: re-materialize the '{model}' asset (its report facts are "
                                "written when it trains)")
    return read_json_file(path)
