"""mm_llmrec's report section: example recommendations of its variant best on validation."""

from __future__ import annotations

from mmrec_pipeline.evaluation import facts, report
from mmrec_pipeline.evaluation.audit import validation_best
from mmrec_pipeline.evaluation.report import ReportInputs, Section

NAME = "mm_llmrec"


def section(inputs: ReportInputs) -> Section | None:
    """Example recommendations of the variant best on validation (never chosen on test)."""
    variant = validation_best(inputs.metrics, NAME, inputs.data.protocol)
    if variant is None:
        return None
    return report.qualitative_examples(facts.read_report_facts(inputs.artifacts, NAME, variant), inputs.data,
                                       f"{NAME}/{variant}: example recommendations")
