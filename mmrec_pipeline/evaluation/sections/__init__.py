"""The models' own report sections, one module per model: `section(ReportInputs) -> Section | None`.

A model class points its `report_section` at its module's `section` (models import evaluation, never the
reverse). A section reads the metrics table, the dataset and the small files a model's asset writes beside its
checkpoints (report facts, summaries); it never loads a checkpoint.
"""
