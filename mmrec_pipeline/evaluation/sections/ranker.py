"""The two-stage ranker's report section, read from the summary its asset writes (`models/ranker/summary.json`)."""

from __future__ import annotations

import polars as pl

from mmrec_pipeline.evaluation.report import ReportInputs, Section
from mmrec_pipeline.storage import read_json_file

NAME = "ranker"
ABLATION_COLUMNS = ("name", "valid_ndcg@10", "test_ndcg@10", "ci_low", "ci_high", "diff_vs_reference", "p_holm",
                    "diff_vs_full", "p_holm_vs_full", "users")


def section(inputs: ReportInputs) -> Section | None:
    """The report's ranker block: candidate recall, gains by family and the ablation table (from summary.json)."""
    path = inputs.artifacts.ranker_summary
    if not path.exists():
        return None
    s = read_json_file(path)
    gains = pl.DataFrame(s["gains"]).pivot(on="variant", index="family", values="share").fill_null(0.0)
    note = (f"Two-stage ranker: candidates = the union of each source's top-N (sources: "
            f"{', '.join(f'{k} = `{v}`' for k, v in s['sources'].items())}), ordered by LightGBM lambdarank fitted "
            f"on {s['users']['fit']} valid users; rounds and leaves chosen on {s['users']['holdout']} others, whose "
            f"ranking is the `@valid` row. Test: {s['users']['test']} users, features from train + valid rows, the "
            f"sources as trained on train. Items outside the candidates rank after them. Reference: the "
            f"validation-best single model `{s['reference']}`; `valid_ndcg@10`: every row's on the holdout users "
            "(the reference's too), the ranker's still optimistic, its LightGBM having learned from other users' "
            "labels of the same period; `p_holm`: Wilcoxon signed-rank on per-user NDCG@10 "
            "vs the reference, Holm-corrected over the three variants; `p_holm_vs_full`: the same test of each ablation "
            "against `ranker/full` (Holm over the two): whether the dropped family helps. Gains: share of the "
            "model's total gain per feature family.")
    ablation = pl.DataFrame(s["ablation"]).select(ABLATION_COLUMNS)
    recall = pl.DataFrame(s["recall"]).select("stage", "source", "N", "recall", "candidates_per_user")
    return Section("Two-stage ranker (candidates + LightGBM)", note, [ablation, recall, gains])
