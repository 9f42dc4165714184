"""The seed audit: for each published system we build, its paper's headline claim and protocol beside our numbers
under the closest protocol we can reproduce and under our own (full-catalog ranking).

A model takes part by setting `paper = PaperClaim(...)` on its `Recommender` class (models/base.py); the caller
passes the registry, so nothing is registered here. Its row is the claim's `variant`, or else the variant that
scored best on validation (the `<protocol>@valid` rows), never the best on test. Baseline rows are the named model assets, trained here.

Every row names its protocol (column `protocol`: the paper's as `PaperClaim.protocol_name` says, ours as the
`protocol` value of the metrics table) and how it was measured (`measured as`). A `+refit` protocol (trained on the
validation item too) is a protocol of its own and is never set beside a published figure: a claim that asks for
one is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import polars as pl

from mmrec_pipeline.evaluation.protocols import REFIT_SUFFIX, best_on_valid, valid_values
from mmrec_pipeline.evaluation.report import Section


@dataclasses.dataclass(frozen=True)
class PaperClaim:
    """A published system's headline claim, as its paper states it, for the report's seed audit.

    `reproduce` maps a label (e.g. "sampled: 100 negatives per user") to the `protocol` value of our metrics
    table whose rows come closest to the paper's protocol (`{protocol}` = the dataset's split protocol); the
    audit reads `metric`@`k` under it and under our own full-catalog protocol. `baselines` names the model assets
    that stand for the paper's baselines."""

    system: str  # the paper's name for it
    source: str  # file under ../shared/papers/
    claim: str  # the headline, quoted or closely paraphrased
    protocol: str  # how the paper measured it
    metric: str  # our metric name of the headline (hr, ndcg, recall, fpr, …)
    k: int | None  # None: a metric without a cut-off (pointwise classification)
    value: float  # the paper's figure
    variant: str = ""  # our variant that stands for the headline system; "" = the model's best on validation
    reproduce: dict[str, str] = dataclasses.field(default_factory=dict)
    baselines: tuple[str, ...] = ()
    notes: str = ""
    # the paper's protocol in a few words, read from its code or text (the audit's `protocol` column); a metrics
    # `protocol` value (e.g. "loo") when the paper's is one of ours
    protocol_name: str = "the paper's own"


def published_systems(models: Mapping[str, type]) -> dict[str, PaperClaim]:
    """{model name: claim} of the registered models (`models`: name -> class) that declare a paper claim."""
    return dict(sorted((name, cls.paper) for name, cls in models.items() if getattr(cls, "paper", None) is not None))


def value(metrics: pl.DataFrame, model: str, variant: str, protocol: str, metric: str, k: int | None) -> float | None:
    """`k` None: a metric without a cut-off (e.g. the pointwise protocol's FPR)."""
    t = metrics.filter((pl.col("model") == model) & (pl.col("variant") == variant) & (pl.col("protocol") == protocol)
                       & (pl.col("metric") == metric) & (pl.col("k").is_null() if k is None else pl.col("k") == k))
    return float(t["value"][0]) if t.height else None


def validation_best(metrics: pl.DataFrame, model: str, protocol: str) -> str | None:
    """The model's variant with the best validation NDCG@10 (`best_on_valid`; the first variant when none has a
    validation value)."""
    rows = metrics.filter(pl.col("model") == model)
    if rows.height == 0:
        return None
    best = best_on_valid(valid_values(rows.filter(pl.col("protocol") == f"{protocol}@valid")))
    return best.split("/", 1)[1] if best else rows["variant"][0]


def audit_table(metrics: pl.DataFrame, model: str, claim: PaperClaim, protocol: str) -> pl.DataFrame | None:
    variant = claim.variant if metrics.filter((pl.col("model") == model) & (pl.col("variant") == claim.variant)).height \
        else validation_best(metrics, model, protocol)
    if variant is None:
        return None
    name = claim.metric if claim.k is None else f"{claim.metric}@{claim.k}"
    rows = [{"row": f"paper: {claim.system}", "model": "(as published)", name: claim.value,
             "protocol": claim.protocol_name, "measured as": claim.protocol}]
    protocols = {label: p.format(protocol=protocol) for label, p in claim.reproduce.items()}
    refit = [p for p in protocols.values() if REFIT_SUFFIX in p]
    if refit:
        raise ValueError(f"{model}: the seed audit would set {refit} beside the published figure; a refit row "
                         "(trained on the validation item too) is a protocol of its own, not the paper's")
    protocols[f"ours: {protocol} split, whole catalog ranked"] = protocol
    for label, p in protocols.items():
        for who in (model, *claim.baselines):
            v = variant if who == model else validation_best(metrics, who, protocol)
            if v is None:
                continue
            x = value(metrics, who, v, p, claim.metric, claim.k)
            rows.append({"row": "ours" if who == model else "baseline (trained here)", "model": f"{who}/{v}",
                         name: x, "protocol": p, "measured as": label if x is not None
                         else f"{label}: {name} not computed under `{p}`"})
    return pl.DataFrame(rows, schema={"row": pl.Utf8, "model": pl.Utf8, name: pl.Float64, "protocol": pl.Utf8,
                                      "measured as": pl.Utf8})


def audit_sections(metrics: pl.DataFrame, protocol: str, models: Mapping[str, type]) -> list[Section]:
    """One report section per published system of `models` (the registry) that has rows in `metrics`."""
    sections = []
    for model, claim in published_systems(models).items():
        table = audit_table(metrics, model, claim, protocol)
        if table is None:
            continue
        note = (f"Headline claim ({claim.source}): {claim.claim}. {claim.notes}").strip()
        sections.append(Section(f"Seed audit: {model}", note, [table]))
    return sections
