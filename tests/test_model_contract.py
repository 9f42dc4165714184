"""The model contract is explicit: what evaluation needs of a model is declared on `Recommender` (its `kind`, the
`at_stage` and `extra_metrics` hooks), so evaluation/ imports nothing from models/ and a new model of either kind
needs no change there."""

import ast
import types
from pathlib import Path

import numpy as np

from mmrec_pipeline.evaluation.protocols import protocol_masking
from mmrec_pipeline.models import MODELS
from mmrec_pipeline.models.base import Recommender
from mmrec_pipeline.models.sequential import SequentialRecommender

EVALUATION = Path(__file__).resolve().parents[1] / "mmrec_pipeline" / "evaluation"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_evaluation_imports_nothing_from_models():
    files = sorted(EVALUATION.rglob("*.py"))
    assert len(files) > 5  # the walk sees the package (sections/ included)
    offenders = {f.relative_to(EVALUATION).as_posix(): sorted(m for m in imported_modules(f)
                                                              if m.startswith("mmrec_pipeline.models"))
                 for f in files}
    assert not {f: m for f, m in offenders.items() if m}


def test_the_kind_is_declared_on_the_class_and_decides_the_recbole_masking():
    assert all(cls.kind == ("sequential" if issubclass(cls, SequentialRecommender) else "general")
               for cls in MODELS.values())

    class NewSequential(Recommender):  # a sequential model evaluation/ has never heard of
        name, kind = "new_sequential", "sequential"

    class NewGeneral(Recommender):
        name = "new_general"

    recbole = types.SimpleNamespace(protocol="recbole")
    for cls, masked in ((NewSequential, False), (NewGeneral, True)):
        # the class itself stands for its instances: `kind` is a class attribute, read without fitting anything
        inputs = protocol_masking(types.SimpleNamespace(exclude_history=None), recbole, cls)
        assert inputs.exclude_history is masked, cls


def test_hooks_have_defaults_on_the_base_class():
    """No hasattr: every model answers `at_stage` and `extra_metrics` (nothing, unless it overrides them), and
    `report_facts` (what its report section reads, saved beside the checkpoint)."""
    model = MODELS["item_knn"]()
    assert model.at_stage(None, "test") is None and model.extra_metrics(None, "item_knn", "default") is None
    assert model.report_facts({"0": np.array([1])}) == {}
    assert MODELS["mmrec_dlrm"].extra_metrics is not Recommender.extra_metrics  # its pointwise protocol
    assert MODELS["popularity"].at_stage is not Recommender.at_stage  # its recent window follows the stage
