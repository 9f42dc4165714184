"""Turn a trained model into rows of the long `metrics` table (docs/ARCHITECTURE.md "Protocols").

Every model goes through `evaluate_model`. Protocols, as written in the `protocol` column of each row:

- `<split>` (`temporal`, `loo` or `recbole`): full-catalog ranking on the test stage; the headline numbers.
  Under `recbole` (5-core on users and items, pool remapped to the items left, leave-one-out) every test user is
  kept, repeats included, and the history minus the test items is masked for general models, nothing for
  sequential ones, as RecBole 1.2.1's full-sort evaluation does for each model type (its FullSortEvalDataLoader
  masks "used items - positive items", so a repeat stays rankable; it does not score it 0).
- `<split>+cold`: only test items never seen in training are relevant, ranked among all items (cold start).
  A model that gives every unseen item the same score cannot rank them: its rows are NaN, never a silent 0
  (`COLD_UNSCORABLE` says why).
- `<split>+sampled:N`: N random negatives per relevant item; exists only to show how sampling inflates numbers.
- `<split>+users:N` (and `+users:N+cold`, `+users:N+sampled:M`): the same ranking for a seeded sample of N of the
  stage's users, when ranking everyone is too slow (`evaluate_model(max_users=N)`, e.g. full-size H&M);
  the others are accounted as `users_dropped:not_sampled`.
- `<split>+refit`: the test ranking again after the chosen configuration was retrained on train + valid
  (`runner.refit_test`, registry key `refit`).
- `...@valid`: the same protocol on the validation stage (model selection reads these rows, never test's).
- `pointwise:rating>=T`: `mmrec_dlrm`'s classification of observed reviews (AUC, log loss), not a ranking.

The predicates below classify a `protocol` column; code asks them rather than matching the strings itself.

Accounting rows (k null) under each protocol: `users_total` (test-stage users) = `users_evaluated` + the
`users_dropped:<reason>` rows (`no_history`, `all_repeats`, and under `+cold` `no_cold_item`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import polars as pl
import torch

from mmrec_pipeline.data.dataset import RecDataset
from mmrec_pipeline.evaluation.metrics import EvalInputs, EvalResult, evaluate, sampled_candidates

KS = (5, 10, 20)
SAMPLED_NEGATIVES = 100
PER_USER_METRICS = ("ndcg", "recall", "hr", "mrr")
COLD_UNSCORABLE = "scores every item unseen in training alike, so it cannot rank cold items"
# Intra-list diversity of every leaderboard row is measured with this vector of the `DIVERSITY_TABLE` feature
# table (the items' sentence vectors), so every model of a dataset is compared on the same definition.
DIVERSITY_TABLE, DIVERSITY_VECTOR = "text_embeddings", "sbert_text"
METRICS_SCHEMA = {"model": pl.Utf8, "variant": pl.Utf8, "protocol": pl.Utf8, "metric": pl.Utf8, "k": pl.Int64,
                  "value": pl.Float64}


class RankedModel(Protocol):
    """What the evaluator reads of a model (models/base.py's `Recommender` implements it): its declared kind
    (`"general"` or `"sequential"`, which decides the `recbole` masking), a hook called before a stage is ranked,
    and scores over the whole catalog."""

    kind: str

    def at_stage(self, data: RecDataset, stage: str) -> None: ...

    def score(self, users: np.ndarray, history: list[np.ndarray]) -> torch.Tensor: ...


def is_main() -> pl.Expr:
    """Rows of the headline protocol: full-catalog test ranking of every user, as trained (not sampled, cold, a
    user sample, refit, another stage or pointwise)."""
    return ~pl.col("protocol").str.contains("[+@]") & ~is_pointwise()


def is_test_stage() -> pl.Expr:
    """Rows scored on the test stage (every protocol but the `@valid` ones)."""
    return ~pl.col("protocol").str.contains("@")


def is_sampled() -> pl.Expr:
    """Rows ranked among N sampled negatives instead of the whole catalog."""
    return pl.col("protocol").str.contains("+sampled:", literal=True)


def is_cold() -> pl.Expr:
    return pl.col("protocol").str.contains("+cold", literal=True)


REFIT_SUFFIX = "+refit"


def is_refit() -> pl.Expr:
    return pl.col("protocol").str.contains(REFIT_SUFFIX, literal=True)


def is_pointwise() -> pl.Expr:
    return pl.col("protocol").str.starts_with("pointwise")


def diversity_inputs(data: RecDataset, item_vectors: np.ndarray | None = None) -> dict:
    """What the beyond-accuracy metrics need: vectors when given, else categories; training popularity."""
    cats = data.items["category"].fill_null("").to_list() if item_vectors is None else None
    return {"item_vectors": item_vectors, "item_categories": cats, "train_counts": data.train_counts()}


def is_sequential(model: RankedModel) -> bool:
    """What the model class declares (`Recommender.kind`, as RecBole's `ModelType`); nothing is imported from
    models/, so a new sequential model needs no change here."""
    return model.kind == "sequential"


def protocol_masking(inputs: EvalInputs, data: RecDataset, model) -> EvalInputs:
    """`inputs` masked as the protocol masks `model`: under `recbole` the history (minus the stage's items) for a
    general model and nothing for a sequential one, as RecBole does; other protocols as `eval_inputs` set them.
    Test ranking and early stopping (training.Validator) both go through here. `model` None: a general model."""
    if data.protocol == "recbole":
        inputs.exclude_history = model is None or not is_sequential(model)
    return inputs


def accounting_rows(inputs: EvalInputs, protocol: str) -> list[dict]:
    """users_total = users_evaluated + the users_dropped:<reason> rows (k null)."""
    rows = []
    if inputs.stage_users is not None:
        rows.append({"protocol": protocol, "metric": "users_total", "k": None, "value": float(inputs.stage_users)})
    rows.append({"protocol": protocol, "metric": "users_evaluated", "k": None, "value": float(len(inputs.users))})
    rows += [{"protocol": protocol, "metric": f"users_dropped:{reason}", "k": None, "value": float(n)}
             for reason, n in inputs.dropped.items()]
    return rows


def scores_cold_items(model, inputs: EvalInputs, unseen: np.ndarray, n_users: int = 64) -> bool:
    """Whether the model tells unseen items apart for some of the first `n_users` users (more than one
    distinct score among them); a model without content signal gives them all one score."""
    cold = torch.as_tensor(np.flatnonzero(unseen))
    if len(cold) < 2 or len(inputs.users) == 0:
        return len(cold) >= 1
    with torch.no_grad():
        scores = torch.as_tensor(model.score(inputs.users[:n_users], inputs.history[:n_users]))[:, cold]
    return bool((scores != scores[:, :1]).any())


def sample_users(inputs: EvalInputs, max_users: int | None, seed: int = 0) -> tuple[np.ndarray | None, str]:
    """A seeded sample of `max_users` of the users `inputs` evaluates (for user bases where ranking everyone is
    too slow), and the protocol suffix that states it: `+users:N`; (None, "") when everyone fits."""
    if max_users is None or len(inputs.users) <= max_users:
        return None, ""
    keep = np.random.default_rng(seed).choice(len(inputs.users), max_users, replace=False)
    return np.sort(inputs.users[keep]), f"+users:{max_users}"


def subsample(inputs: EvalInputs, max_users: int, seed: int = 0) -> EvalInputs:
    """At most `max_users` users of `inputs` (validation during training need not see every user); each kept
    user keeps their protocol mask (`recbole`) and candidates."""
    if len(inputs.users) <= max_users:
        return inputs
    keep = np.sort(np.random.default_rng(seed).choice(len(inputs.users), max_users, replace=False))
    return EvalInputs(n_items=inputs.n_items, users=inputs.users[keep], history=[inputs.history[i] for i in keep],
                      relevant=[inputs.relevant[i] for i in keep], exclude_history=inputs.exclude_history,
                      candidates=None if inputs.candidates is None else [inputs.candidates[i] for i in keep],
                      mask=None if inputs.mask is None else [inputs.mask[i] for i in keep])


def restrict_users(inputs: EvalInputs, users: np.ndarray | None, reason: str = "not_sampled") -> EvalInputs:
    """`inputs` for the users in `users` only (all when None); the others count as `users_dropped:<reason>`."""
    if users is None:
        return inputs
    keep = np.flatnonzero(np.isin(inputs.users, users))
    return dataclasses.replace(
        inputs, users=inputs.users[keep], history=[inputs.history[i] for i in keep],
        relevant=[inputs.relevant[i] for i in keep],
        candidates=None if inputs.candidates is None else [inputs.candidates[i] for i in keep],
        mask=None if inputs.mask is None else [inputs.mask[i] for i in keep],
        dropped={**inputs.dropped, reason: len(inputs.users) - len(keep)})


def evaluate_model(model: RankedModel, data: RecDataset, model_name: str, variant: str = "default",
                   item_vectors: np.ndarray | None = None, sampled: int | None = SAMPLED_NEGATIVES,
                   stage: str = "test", batch_size: int = 256, cold: bool = True,
                   max_users: int | None = None, users: np.ndarray | None = None,
                   users_dropped: str = "not_sampled", ks: Sequence[int] = KS) -> tuple[pl.DataFrame, EvalResult]:
    """Metric rows for one trained model; also returns the full-ranking `EvalResult` (per-user values for CIs
    and paired tests, plots, tests). `ks`: the cut-offs (H&M's MAP@12 needs 12 among them). `max_users`: rank a seeded sample of that many users (protocol
    `<split>+users:N`, see `sample_users`) instead of every user of the stage. `users`: rank only these users
    of the stage, under the stage's own protocol (the ranker's `@valid` rows: the valid users its LightGBM was
    not fitted on); the others are accounted as `users_dropped:<users_dropped>`."""
    if users is not None and max_users is not None:
        raise ValueError("evaluate_model: pass `users` or `max_users`, not both")
    model.at_stage(data, stage)  # scores that depend on where the stage's histories end (recent popularity)
    inputs = data.eval_inputs(stage)
    chosen, users_suffix = (users, "") if users is not None else sample_users(inputs, max_users)
    inputs = protocol_masking(restrict_users(inputs, chosen, users_dropped), data, model)
    protocol = f"{data.protocol}{users_suffix}"
    extra = diversity_inputs(data, item_vectors)
    full = evaluate(model.score, inputs, ks=ks, batch_size=batch_size, **extra)
    rows = [{"protocol": protocol, **r} for r in full.rows]
    rows += accounting_rows(inputs, protocol)
    if cold and stage == "test":  # the cold-start protocol reports test numbers; tuning on valid skips it
        rows += cold_rows(model, data, stage, batch_size, chosen, users_suffix, users_dropped, ks)
    if sampled:
        cand = dataclasses.replace(inputs, candidates=sampled_candidates(inputs, sampled, seed=0))
        samp = evaluate(model.score, cand, ks=ks, batch_size=batch_size)
        rows += [{"protocol": f"{protocol}+sampled:{sampled}", **r} for r in samp.rows
                 if r["metric"] in ("hr", "ndcg", "mrr")]
    if stage != "test":
        rows = [{**r, "protocol": f"{r['protocol']}@{stage}"} for r in rows]
    table = pl.DataFrame([{"model": model_name, "variant": variant, **r} for r in rows], schema=METRICS_SCHEMA)
    return table, full


def cold_rows(model, data: RecDataset, stage: str = "test", batch_size: int = 256,
              users: np.ndarray | None = None, users_suffix: str = "", users_dropped: str = "not_sampled",
              ks: Sequence[int] = KS) -> list[dict]:
    """The cold-start protocol's rows: accuracy metrics when the model can rank unseen items, else NaN.
    `users`/`users_suffix`/`users_dropped`: the main protocol's user selection (`sample_users`), if any."""
    protocol = f"{data.protocol}{users_suffix}+cold"
    inputs = restrict_users(data.eval_inputs(stage, cold=True), users, users_dropped)
    accounting = accounting_rows(inputs, protocol)
    if len(inputs.users) == 0:
        return accounting
    if not scores_cold_items(model, inputs, data.train_counts() == 0):
        return accounting + [{"protocol": protocol, "metric": m, "k": k, "value": float("nan")}
                             for m in ("hr", "recall", "ndcg", "mrr") for k in ks]
    result = evaluate(model.score, inputs, ks=ks, batch_size=batch_size)
    return accounting + [{"protocol": protocol, **r} for r in result.rows
                         if r["metric"] in ("hr", "recall", "ndcg", "mrr")]


def per_user_table(result: EvalResult, data: RecDataset, model_name: str, variant: str, protocol: str,
                   metrics: tuple[str, ...] = PER_USER_METRICS, k: int = 10) -> pl.DataFrame:
    """One row per evaluated user: the per-user metric@k values behind the averages (for bootstrap CIs and
    paired tests); `user_id` aligns rows of different models."""
    cols = {f"{m}@{k}": result.per_user[f"{m}@{k}"] for m in metrics if f"{m}@{k}" in result.per_user}
    return pl.DataFrame({"model": [model_name] * result.n_users, "variant": [variant] * result.n_users,
                         "protocol": [protocol] * result.n_users,
                         "user_id": [str(u) for u in data.user_ids[result.users]], **cols})


def valid_values(metrics: pl.DataFrame, metric: str = "ndcg", k: int | None = 10) -> dict[str, float]:
    """{model/variant: `metric@k` on the headline protocol's `@valid` rows (full ranking)}: what every choice on
    validation reads (`k` None: a row without a cut-off, e.g. `users_evaluated`). NaN and null values are left
    out."""
    t = metrics.filter(pl.col("protocol").str.ends_with("@valid") & ~pl.col("protocol").str.contains("+", literal=True)
                       & ~is_pointwise() & (pl.col("metric") == metric) & (pl.col("k").is_null() if k is None else pl.col("k") == k)
                       & pl.col("value").is_not_null() & pl.col("value").is_not_nan())
    return {f"{m}/{v}": x for m, v, x in t.select("model", "variant", "value").iter_rows()}


def best_on_valid(valid: Mapping[str, float | None], among: Iterable[str] | None = None) -> str | None:
    """The one choice on validation: the name of `among` (default: every name of `valid`) with the highest
    validation value, the first by name on ties. A name without a value, or with NaN, never wins; None when no
    name has one."""
    scored = sorted(n for n in (valid if among is None else among)
                    if valid.get(n) is not None and not math.isnan(valid[n]))
    return max(scored, key=lambda n: valid[n]) if scored else None


def per_user_stage(per_user: pl.DataFrame | None, stage: str = "test") -> pl.DataFrame | None:
    """One row per model, variant and user of the headline protocol's `stage` (test, or the `@valid` rows):
    with several training seeds a user's value is the mean over the seeds (column `seeds` counts them), so a row's
    mean over users is the leaderboard's mean over seeds, and its CI and paired tests describe that same mean."""
    if per_user is None or not per_user.height:
        return None
    pu = per_user if "seed" in per_user.columns else per_user.with_columns(pl.lit(0, dtype=pl.Int64).alias("seed"))
    protocol = pl.col("protocol")
    keep = (protocol.str.ends_with("@valid") & ~protocol.str.contains("+", literal=True) if stage == "valid"
            else ~protocol.str.contains("[+@]"))
    values = [c for c in pu.columns if "@" in c]
    out = (pu.filter(keep).group_by(["model", "variant", "user_id"], maintain_order=True)
           .agg(*[pl.col(c).mean() for c in values], pl.col("seed").n_unique().alias("seeds")))
    return out if out.height else None


def valid_on_shared_users(metrics: pl.DataFrame, per_user: pl.DataFrame | None,
                          k: int = 10) -> tuple[dict[str, float], set[str] | None]:
    """({model/variant: validation NDCG@k}, users): the values choices on validation compare, all on the same
    users. Every single model is validated on every valid user; the two-stage ranker only on the valid users its
    LightGBM was not fitted on (its holdout). When the rows were validated on different users (their per-user
    validation users, or their `users_evaluated` counts, differ), each row's value is its mean over the users every
    row with per-user validation values was validated on (`users`: their ids; a row without them is left out, it
    cannot be compared there); else each row's own `@valid` value (`users` None)."""
    valid = valid_values(metrics, "ndcg", k)
    counts = valid_values(metrics, "users_evaluated", None)
    rows = per_user_stage(per_user, "valid")
    metric = f"ndcg@{k}"
    users = {}
    if rows is not None and metric in rows.columns:
        rows = rows.with_columns((pl.col("model") + "/" + pl.col("variant")).alias("name")).filter(
            pl.col("name").is_in(list(valid)))
        users = {name: set(group["user_id"]) for (name,), group in rows.group_by("name")}
    if len({frozenset(u) for u in users.values()}) <= 1 and len({counts[n] for n in valid if n in counts}) <= 1:
        return valid, None
    if not users:  # no per-user values to compare on: the rows validated on as many users as most rows were
        usual = max(set(counts.values()), key=list(counts.values()).count)
        return {n: x for n, x in valid.items() if counts.get(n, usual) == usual}, None
    shared = set.intersection(*users.values())
    means = rows.filter(pl.col("user_id").is_in(list(shared))).group_by("name").agg(pl.col(metric).mean())
    return {n: x for n, x in means.iter_rows()}, shared


def headline(table: pl.DataFrame, metric: str = "ndcg", k: int = 10) -> dict[str, float]:
    """{variant: value} of one full-ranking metric, for asset metadata and logs."""
    t = table.filter((pl.col("metric") == metric) & (pl.col("k") == k) & is_main())
    return dict(zip(t["variant"].to_list(), t["value"].to_list()))


def check_user_accounting(metrics: pl.DataFrame) -> tuple[bool, dict]:
    """Every test user is accounted for: users_total = users_evaluated + the dropped counts, for every model,
    variant and protocol that reports a total. Returns (ok, the rows where it does not hold)."""
    t = metrics.filter(pl.col("metric").str.starts_with("users_") & pl.col("k").is_null())
    sums = t.group_by(["model", "variant", "protocol"]).agg(
        pl.col("value").filter(pl.col("metric") == "users_total").sum().alias("total"),
        pl.col("value").filter(pl.col("metric") == "users_total").len().alias("has_total"),
        pl.col("value").filter(pl.col("metric") != "users_total").sum().alias("accounted"))
    bad = sums.filter((pl.col("has_total") > 0) & (pl.col("total") != pl.col("accounted")))
    return bad.height == 0, {"checked": int((sums["has_total"] > 0).sum()), "mismatches": bad.drop("has_total").to_dicts()}


def check_metrics(table: pl.DataFrame, protocol: str, ks: tuple[int, ...] = KS) -> tuple[bool, dict]:
    """No NaN/null values (except the stated cold-start NaN of a model that cannot rank unseen items); every
    variant of a model has NDCG at every K for each ranking protocol the model claims (any protocol one of its
    variants has, unless that protocol evaluated no user), and AUC for each pointwise protocol it claims (a
    classification: no ranking, no K); every model has the test (`protocol`) and `protocol@valid` rows."""
    # A cold-start NaN is the stated "cannot rank unseen items" (cold_rows), not a broken metric.
    bad = table.filter((pl.col("value").is_null() | pl.col("value").is_nan())
                       & ~pl.col("protocol").str.ends_with("+cold"))
    claimed = table.select("model", "protocol").unique()
    required = table.select("model").unique().join(
        pl.DataFrame({"protocol": [protocol, f"{protocol}@valid"]}), how="cross")
    expected = (pl.concat([claimed, required]).unique()
                .join(table.select("model", "variant").unique(), on="model")
                .with_columns(pl.when(is_pointwise()).then(pl.lit("auc")).otherwise(pl.lit("ndcg")).alias("metric"))
                .join(pl.DataFrame({"k": list(ks)}, schema={"k": pl.Int64}), how="cross")
                .with_columns(pl.when(is_pointwise()).then(None).otherwise(pl.col("k")).alias("k"))
                .unique())
    # A claimed protocol that evaluated no user (e.g. `+cold` where no test item is new) has only its user
    # accounting rows; the test and valid protocols always need their metric rows.
    no_users = table.filter((pl.col("metric") == "users_evaluated") & (pl.col("value") == 0)
                            & ~pl.col("protocol").is_in([protocol, f"{protocol}@valid"])).select("model", "variant",
                                                                                               "protocol")
    expected = expected.join(no_users, on=["model", "variant", "protocol"], how="anti")
    keys = ["model", "variant", "protocol", "metric", "k"]
    have = table.filter(pl.col("metric").is_in(["ndcg", "auc"])).select(keys).unique()
    missing = expected.join(have, on=keys, how="anti", nulls_equal=True).sort(keys)
    examples = [f"{r['model']}/{r['variant']} {r['protocol']} {r['metric']}" + (f"@{r['k']}" if r["k"] else "")
                for r in missing.head(5).iter_rows(named=True)]
    nan_examples = [f"{r['model']}/{r['variant']} {r['protocol']} {r['metric']}@{r['k']}"
                    for r in bad.head(5).iter_rows(named=True)]
    return bad.height == 0 and missing.height == 0, {
        "nan_or_null_values": bad.height, "nan_examples": nan_examples, "missing_rows": missing.height,
        "missing_examples": examples, "models": table["model"].n_unique()}
