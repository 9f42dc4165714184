"""The per-dataset report: the leaderboard grouped by model group with bootstrap CIs and paired-test markers
(significance.py), the accounting of test users, the cold-start table, the accuracy-coverage Pareto plot, per-K
curves and metric bars (matplotlib PNGs), dataset and split figures, then the sections each model adds through its
`report_section` hook. Everything is a list of `Section`s, rendered once as a self-contained HTML file from the
autoescaping Jinja template `templates/report.html.j2` and once as Markdown (Dagster metadata)."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import numpy as np
import polars as pl
from markupsafe import Markup, escape

from mmrec_pipeline.evaluation.facts import EXAMPLE_USERS, REPORT_TOP_K
from mmrec_pipeline.evaluation.metrics import TIE_METRIC
from mmrec_pipeline.evaluation.protocols import (
    COLD_UNSCORABLE,
    best_on_valid,
    is_cold,
    is_main,
    is_refit,
    is_sampled,
    is_test_stage,
    per_user_stage,
    subsample,
    valid_on_shared_users,
)
from mmrec_pipeline.evaluation.significance import (
    ALPHA,
    bootstrap_ci,
    paired_p_value,
    paired_tests,
    pareto_front,
)
from mmrec_pipeline.storage import DatasetView

if TYPE_CHECKING:
    from mmrec_pipeline.data.dataset import RecDataset

LEADERBOARD_METRICS = ["ndcg", "hr", "recall", "precision", "mrr", "map", "coverage", "diversity", "novelty",
                       TIE_METRIC]


def pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first use: at the top of this module every process
    that imports the code location would pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def full_ranking(metrics: pl.DataFrame) -> pl.DataFrame:
    return metrics.filter(is_main())


def leaderboard(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """One row per model/variant, a column per metric@k, best NDCG first, with the ratio to popularity."""
    t = full_ranking(metrics).filter(pl.col("k") == k).with_columns(
        (pl.col("model") + "/" + pl.col("variant")).alias("name"))
    wide = t.pivot(on="metric", index=["name", "model", "variant"], values="value", aggregate_function="first")
    cols = [m for m in LEADERBOARD_METRICS if m in wide.columns]
    wide = wide.select(["name", "model", "variant", *cols]).sort("ndcg", descending=True, nulls_last=True)
    pop = wide.filter(pl.col("model") == "popularity")["ndcg"].max() if "ndcg" in wide.columns else None
    if pop:
        wide = wide.with_columns((pl.col("ndcg") / pop).round(2).alias("ndcg_vs_popularity"))
    return wide


def sampled_vs_full(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """HR@k under full ranking next to HR@k under the sampled protocol: how sampling inflates numbers."""
    t = metrics.filter((pl.col("metric") == "hr") & (pl.col("k") == k)
                       & is_test_stage() & ~is_cold() & ~is_refit())
    if t.height == 0:
        return t
    t = t.with_columns(pl.when(is_sampled()).then(pl.col("protocol"))
                       .otherwise(pl.lit("full")).alias("kind"), (pl.col("model") + "/" + pl.col("variant")).alias("name"))
    return t.pivot(on="kind", index="name", values="value", aggregate_function="first").sort("name")


def _fmt_ci(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "NaN"
    return f"{value:.3f}" if ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _marker(p_holm: float | None, diff: float | None) -> str:
    """▲ / ▼: significantly better / worse than the reference (Holm-adjusted p < ALPHA), ≈: not significant."""
    if p_holm is None:
        return "n/a"
    if p_holm >= ALPHA:
        return f"≈ (p={p_holm:.2g})"
    return f"{'▲' if diff > 0 else '▼'} (p={p_holm:.2g})"


def leaderboard_with_ci(metrics: pl.DataFrame, per_user: pl.DataFrame | None,
                        model_groups: dict[str, str] | None = None, k: int = 10,
                        n_resamples: int = 1000) -> pl.DataFrame:
    """The leaderboard a reader can compare rows of: grouped by model group (`model_groups`: {model: group}; best NDCG@k first inside each),
    NDCG@k and Recall@k with 95% bootstrap CIs over users, and Wilcoxon + Holm markers against the reference
    rows, the best model and the best popularity variant, both chosen by their validation NDCG@k (`@valid` rows,
    on the users every row was validated on: `valid_on_shared_users`), never by test. `seeds` says how many
    training seeds each row averages; with several, each user's value is the mean over them (`per_user_stage`). `ties@k`: share of test users whose top-k cut-off is inside a tie."""
    board = leaderboard(metrics, k)
    model_groups = model_groups or {}
    board = board.with_columns(pl.col("model").replace_strict(model_groups, default="other").alias("group"))
    cis: dict[str, dict[str, tuple[float, float]]] = {}
    vs_best = vs_pop = {}
    best = pop = None
    valid, _ = valid_on_shared_users(metrics, per_user, k)
    test_users = per_user_stage(per_user, "test")
    if test_users is not None:
        named = test_users.with_columns((pl.col("model") + "/" + pl.col("variant")).alias("name"))
        for (name,), group in named.group_by("name"):
            cis[name] = {m: bootstrap_ci(group[f"{m}@{k}"].to_numpy(), n_resamples)
                         for m in ("ndcg", "recall") if f"{m}@{k}" in group.columns}
        ranked = board.filter(pl.col("name").is_in(list(cis)))
        best = best_on_valid(valid, ranked["name"].to_list())
        pop = best_on_valid(valid, ranked.filter(pl.col("model") == "popularity")["name"].to_list())
        metric = f"ndcg@{k}"
        if best:
            vs_best = {r["name"]: r for r in paired_tests(test_users, metric, best).iter_rows(named=True)}
        if pop:
            vs_pop = {r["name"]: r for r in paired_tests(test_users, metric, pop).iter_rows(named=True)}
    seeds_rows = metrics.filter((pl.col("metric") == "seeds") & ~pl.col("protocol").str.contains("[+@]"))
    n_seeds = {f"{m}/{v}": int(x) for m, v, x in seeds_rows.select("model", "variant", "value").iter_rows()}
    if test_users is not None:  # per-user files say it too (the only record of runs older than the `seeds` row)
        for m, v, n in test_users.group_by(["model", "variant"]).agg(pl.col("seeds").max()).rows():
            n_seeds[f"{m}/{v}"] = max(n_seeds.get(f"{m}/{v}", 1), n)
    rows = []
    for r in board.iter_rows(named=True):
        name = r["name"]
        ci = cis.get(name, {})
        rows.append({
            "group": r["group"], "model": name,
            f"NDCG@{k} [95% CI]": _fmt_ci(r.get("ndcg"), ci.get("ndcg")),
            f"Recall@{k} [95% CI]": _fmt_ci(r.get("recall"), ci.get("recall")),
            f"HR@{k}": _fmt_ci(r.get("hr"), None), f"coverage@{k}": _fmt_ci(r.get("coverage"), None),
            f"valid NDCG@{k}": _fmt_ci(valid.get(name), None),
            "vs best": "reference" if name == best else (_marker(*_pd(vs_best.get(name))) if best else "n/a"),
            "vs popularity": "reference" if name == pop else (_marker(*_pd(vs_pop.get(name))) if pop else "n/a"),
            f"ties@{k}": _fmt_ci(r.get(TIE_METRIC), None),
            "seeds": n_seeds.get(name, 1)})
    order = {g: i for i, g in enumerate(dict.fromkeys(model_groups.values()))}
    out = pl.DataFrame(rows, schema_overrides={"seeds": pl.Int64}) if rows else pl.DataFrame()
    if out.height:
        out = out.with_columns(pl.col("group").replace_strict(order, default=len(order)).alias("_g"),
                               pl.int_range(pl.len()).alias("_r")).sort(["_g", "_r"]).drop("_g", "_r")
    return out


def champion_margin(metrics: pl.DataFrame, per_user: pl.DataFrame | None, k: int = 10) -> pl.DataFrame:
    """The best row on validation NDCG@k (the champion, unless serving pins another) against the runner-up,
    both chosen on the users every row was validated on (`valid_on_shared_users`): both validation values, the
    mean per-user difference on the validation users both were scored on and its two-sided Wilcoxon signed-rank
    p-value. Empty without two rows that have validation values."""
    valid, shared = valid_on_shared_users(metrics, per_user, k)
    valid_users = per_user_stage(per_user, "valid")
    if valid_users is not None and shared is not None:
        valid_users = valid_users.filter(pl.col("user_id").is_in(list(shared)))
    champion = best_on_valid(valid)
    runner_up = best_on_valid(valid, [n for n in valid if n != champion])
    if runner_up is None:
        return pl.DataFrame()
    diff = p = users = None
    if valid_users is not None:
        metric = f"ndcg@{k}"
        wide = (valid_users.select((pl.col("model") + "/" + pl.col("variant")).alias("name"), "user_id", metric)
                .filter(pl.col("name").is_in([champion, runner_up]))
                .pivot(on="name", index="user_id", values=metric, aggregate_function="first").drop_nulls())
        if champion in wide.columns and runner_up in wide.columns and wide.height:
            a, b = wide[champion].to_numpy(), wide[runner_up].to_numpy()
            diff, p, users = float(np.mean(a - b)), paired_p_value(a, b), wide.height
    return pl.DataFrame([{"champion (best on valid)": champion, f"valid NDCG@{k}": valid[champion],
                          "runner-up": runner_up, f"runner-up valid NDCG@{k}": valid[runner_up],
                          "margin (paired, valid users)": diff, "Wilcoxon p": p, "valid users": users}],
                        schema_overrides={"margin (paired, valid users)": pl.Float64, "Wilcoxon p": pl.Float64,
                                          "valid users": pl.Int64})


def _pd(row: dict | None) -> tuple[float | None, float | None]:
    return (None, None) if row is None else (row["p_holm"], row["diff"])


def user_accounting(metrics: pl.DataFrame, filtered: dict[str, int] | None = None) -> pl.DataFrame:
    """protocol, users, count: test users total / evaluated / dropped with the reason, per protocol. One value
    when every model saw the same users (they do under one protocol), else the range over models. `filtered`:
    {reason: users} removed before the split (the user k-core), in a first row of their own."""
    t = metrics.filter(pl.col("metric").str.starts_with("users_") & ~is_sampled())
    if t.height == 0:
        return pl.DataFrame()
    if filtered:
        before = pl.DataFrame({"protocol": "(before the split)", "users": list(filtered),
                               "count": [str(n) for n in filtered.values()]})
        return pl.concat([before, user_accounting(metrics)])
    g = t.group_by(["protocol", "metric"], maintain_order=True).agg(pl.col("value").min().alias("lo"),
                                                                      pl.col("value").max().alias("hi"))
    return g.select("protocol", pl.col("metric").str.replace("users_", "").str.replace(":", ": ").alias("users"),
                    pl.when(pl.col("lo") == pl.col("hi")).then(pl.col("lo").cast(pl.Int64).cast(pl.Utf8))
                    .otherwise(pl.format("{}–{} (differs by model)", pl.col("lo").cast(pl.Int64),
                                         pl.col("hi").cast(pl.Int64))).alias("count"))


def cold_start_table(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """Per model: NDCG / Recall / HR @k on the `+cold` protocol (test items never seen in training, ranked
    among all items), with the reason where the model cannot score unseen items."""
    t = metrics.filter(is_cold() & is_test_stage() & ~is_refit()).with_columns(
        (pl.col("model") + "/" + pl.col("variant")).alias("name"))
    if t.height == 0:
        return pl.DataFrame()
    users = t.filter(pl.col("metric") == "users_evaluated").select("name", pl.col("value").cast(pl.Int64)
                                                                    .alias("cold users"))
    wide = (t.filter(pl.col("k") == k).pivot(on="metric", index="name", values="value", aggregate_function="first")
            .join(users, on="name", how="left"))
    rows = []
    for r in wide.iter_rows(named=True):
        nan = r.get("ndcg") is None or np.isnan(r["ndcg"])
        rows.append({"model": r["name"], "cold users": r["cold users"],
                     **{f"{m}@{k}": "NaN" if nan else f"{r[m.lower()]:.3f}" for m in ("NDCG", "Recall", "HR")},
                     "note": COLD_UNSCORABLE if nan else ""})
    if not rows:  # no test user had a cold item: only the accounting rows exist
        return pl.DataFrame()
    return pl.DataFrame(rows).sort(f"NDCG@{k}", descending=True)


def plot_accuracy_coverage(board: pl.DataFrame, model_groups: dict[str, str] | None = None, k: int = 10) -> bytes:
    """NDCG@k against catalog coverage@k, one point per model, with the Pareto frontier (no other model is at
    least as accurate and covers at least as much of the catalog)."""
    b = board.filter(pl.col("ndcg").is_not_null() & pl.col("coverage").is_not_null()
                     & pl.col("ndcg").is_not_nan() & pl.col("coverage").is_not_nan())
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    groups = [(model_groups or {}).get(m, "other") for m in b["model"].to_list()]
    for g in dict.fromkeys(groups):
        sel = [i for i, x in enumerate(groups) if x == g]
        ax.scatter(b["coverage"].to_numpy()[sel], b["ndcg"].to_numpy()[sel], label=g, s=25)
    front = pareto_front(b["coverage"].to_numpy(), b["ndcg"].to_numpy())
    if len(front):
        ax.plot(b["coverage"].to_numpy()[front], b["ndcg"].to_numpy()[front], "k--", lw=1, label="Pareto frontier")
        for i in front:
            ax.annotate(b["name"][int(i)], (b["coverage"][int(i)], b["ndcg"][int(i)]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"catalog coverage@{k}")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title("accuracy vs coverage (full-catalog ranking)")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_bars(board: pl.DataFrame, metric: str, title: str) -> bytes:
    b = board.filter(pl.col(metric).is_not_null()).sort(metric)
    fig, ax = pyplot().subplots(figsize=(7, 0.3 * b.height + 1.2))
    ax.barh(b["name"].to_list(), b[metric].to_list(), color="#4C72B0")
    ax.set_xlabel(metric)
    ax.set_title(title)
    return _png(fig)


def plot_per_k(metrics: pl.DataFrame, metric: str, top: int = 10) -> bytes:
    """metric@K for K = 5, 10, 20, one line per model/variant (the `top` best at K=10)."""
    t = full_ranking(metrics).filter(pl.col("metric") == metric).with_columns(
        (pl.col("model") + "/" + pl.col("variant")).alias("name"))
    best = t.filter(pl.col("k") == 10).sort("value", descending=True)["name"].head(top).to_list()
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for name in best:
        s = t.filter(pl.col("name") == name).sort("k")
        ax.plot(s["k"].to_list(), s["value"].to_list(), marker="o", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric}@K")
    ax.set_xticks(sorted(t["k"].unique().to_list()))
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{metric}@K, full-catalog ranking")
    return _png(fig)


def validation_series(rows: list[dict]) -> tuple[str, list[int], list[float]]:
    """A training curve's early-stopping key (`valid_<metric>@<k>`, the first `valid_` key of its rows) and its
    validated epochs and values (epochs between validation checks have none)."""
    key = next((k for r in rows for k in r if k.startswith("valid_")), "valid_ndcg@10")
    validated = [r for r in rows if key in r]
    return key, [r["epoch"] for r in validated], [r[key] for r in validated]


def plot_learning_curves(curves: dict[str, list[dict]], title: str) -> bytes:
    """Training loss and the early-stopping value by epoch (`valid_ndcg@10`, or the `valid_<metric>@<k>` a model's
    `valid_metric` and `valid_k` name), one line per variant."""
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(9, 3.2))
    names = set()
    for variant, rows in curves.items():
        a1.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], label=variant)
        key, epochs, values = validation_series(rows)
        names.add(key.removeprefix("valid_").replace("ndcg", "NDCG").replace("recall", "Recall"))
        a2.plot(epochs, values, marker="o", label=variant)
    a1.set_title(f"{title}: training loss")
    a2.set_title(f"validation {' / '.join(sorted(names)) or 'NDCG@10'}")
    for a in (a1, a2):
        a.set_xlabel("epoch")
        a.legend(fontsize=7)
    return _png(fig)


def cell(value, digits: int = 4) -> str:
    """A table cell as text: floats to `digits` decimals, None empty (the one formatting of both renderings)."""
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _md_text(text: str) -> str:
    """Data text inside Markdown: HTML-escaped (Markdown passes raw HTML through), on one line, no cell breaks."""
    return html.escape(str(text), quote=False).replace("\n", " ").replace("|", "\\|")


def md_table(df: pl.DataFrame, digits: int = 4) -> str:
    """The one Markdown table builder (report, Dagster metadata): every cell escaped by `_md_text`."""
    lines = ["| " + " | ".join(_md_text(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_md_text(cell(v, digits)) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


def _img(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


@dataclasses.dataclass
class Tile:
    """One item of an example row: its title, whether the user bought it in the test period, a thumbnail."""

    title: str
    hit: bool = False
    thumbnail: str | None = None  # a data: URI


@dataclasses.dataclass
class Example:
    """One test user: their most recent items (newest first), the model's top items, and, for a generative
    model, the text it generated for the next item."""

    user: str
    recent: list[Tile]
    recommended: list[Tile]
    generated: str | None = None


@dataclasses.dataclass
class Section:
    """One titled block of the report. `note` is short Markdown (**bold** and `code` only); tables, images and
    examples hold the data as they are: the template escapes them."""

    title: str
    note: str = ""
    tables: list[pl.DataFrame] = dataclasses.field(default_factory=list)
    digits: int = 4
    images: dict[str, str] = dataclasses.field(default_factory=dict)  # alt text -> data: URI of a PNG
    examples: list[Example] = dataclasses.field(default_factory=list)
    examples_note: str = ""


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """What a model's `report_section` hook reads: the dataset's metrics table, the dataset, and its artifacts in
    the lake (every model's report facts and checkpoint configs, by name)."""

    metrics: pl.DataFrame
    data: RecDataset
    artifacts: DatasetView


def _inline(text: str) -> Markup:
    """A note for HTML: escaped, then its Markdown **bold** and `code` marks as tags."""
    escaped = str(escape(text))
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                undefined=jinja2.StrictUndefined)
_TEMPLATES.filters["inline"] = _inline
_TEMPLATES.globals["cell"] = cell


def render_html(dataset: str, intro: str, sections: list[Section]) -> str:
    return _TEMPLATES.get_template("report.html.j2").render(dataset=dataset, intro=intro, sections=sections)


def _md_tiles(tiles: list[Tile]) -> str:
    return "; ".join(("✓ " if t.hit else "") + _md_text(t.title) for t in tiles)


def render_markdown(dataset: str, intro: str, sections: list[Section]) -> str:
    """The same report as Markdown (Dagster metadata): images inline, data text escaped by `_md_text`, notes
    HTML-escaped (their Markdown marks kept)."""
    def note(text: str) -> str:
        return html.escape(text, quote=False)

    md = [f"# {_md_text(dataset)}: evaluation report", note(intro)]
    for s in sections:
        md += [f"## {_md_text(s.title)}", *([note(s.note)] if s.note else []),
               *[md_table(t, s.digits) for t in s.tables]]
        md += [f"![{_md_text(alt)}]({uri})" for alt, uri in s.images.items()]
        md += [note(s.examples_note)] if s.examples else []
        for ex in s.examples:
            generated = f" → generated: _{_md_text(ex.generated or '(empty)')}_" if ex.generated is not None else ""
            md.append(f"**user {_md_text(ex.user)}** — recent: {_md_tiles(ex.recent)}{generated} → recommended: "
                      f"{_md_tiles(ex.recommended)}")
    return "\n\n".join(md)


def build_report(dataset: str, metrics: pl.DataFrame, facts: dict, protocol: str,
                 sections: list[Section] | None = None, per_user: pl.DataFrame | None = None,
                 model_groups: dict[str, str] | None = None, filtered: dict[str, int] | None = None
                 ) -> tuple[str, str]:
    """(html, markdown) for one dataset. `facts`: dataset and split figures; `sections`: the blocks the models
    add (their `report_section`) and the seed audit; `per_user`: the models' per-user test (every seed) and
    validation metrics (CIs and paired tests); `model_groups`: {model: group}; `filtered`: {reason: users} dropped
    before the split (user accounting)."""
    board = leaderboard(metrics)
    ranked = leaderboard_with_ci(metrics, per_user, model_groups)
    plots = {"NDCG@10 by model": plot_bars(board, "ndcg", f"{dataset}: NDCG@10 (full catalog)")}
    if "coverage" in board.columns:
        plots["Accuracy vs coverage"] = plot_accuracy_coverage(board, model_groups)
        plots["Catalog coverage@10"] = plot_bars(board, "coverage", "catalog coverage@10")
    plots["NDCG@K"] = plot_per_k(metrics, "ndcg")
    plots["Recall@K"] = plot_per_k(metrics, "recall")
    sampled = sampled_vs_full(metrics)
    accounting = user_accounting(metrics, filtered)
    margin = champion_margin(metrics, per_user)
    cold = cold_start_table(metrics)
    facts_df = pl.DataFrame({"figure": list(facts), "value": [str(v) for v in facts.values()]})
    intro = (f"Protocol: **{protocol}** split, every model ranks the **whole catalog**; items in the user's history "
             "are excluded unless the registry says repeat purchases count. Metrics are averaged over test users with "
             "history and at least one relevant item (the user accounting below says how many and why the others "
             "were left out). The sampled rows exist only to show how sampling inflates numbers.")
    if protocol == "recbole":
        intro += (" Under **recbole** (RecBole's protocol, for comparisons with RecBole and papers): 5-core on users "
                  "and items, leave-one-out, the pool is the items left, users whose test items are all repeats are "
                  "kept and stay rankable (the history minus the test items is masked, as RecBole does), history is "
                  "masked for general models but not for sequential ones.")
    stats_note = (f"Full-catalog ranking under **{protocol}**, K = 10, grouped by model group. Brackets: 95% "
                  "percentile bootstrap CI over test users (1000 resamples, seed 0). `vs best` / `vs popularity`: "
                  "two-sided Wilcoxon signed-rank test of per-user NDCG@10 against the reference row: the row best "
                  "on **validation** NDCG@10 / the popularity variant best on validation (`valid NDCG@10`; never "
                  "chosen on test), Holm-corrected over the rows compared with each reference; ▲ / ▼ = "
                  f"significantly better / worse at α = {ALPHA}, ≈ = not significant. `ties@10`: share of test users "
                  "whose 10th and 11th items have the same score, so the tie order (lower item index first), not the "
                  "model, decided the end of the list. `seeds`: training seeds behind the row (1 = single-seed); "
                  "with more, the row is the mean over seeds, and its CI and tests are over each user's mean over "
                  "the seeds (the spread over seeds is the `ndcg_std` row of the metrics table).")
    if per_user is None or not per_user.height:
        stats_note += " No per-user values were found, so no CI or test is shown (n/a)."
    _, shared = valid_on_shared_users(metrics, per_user)
    shared_note = "" if shared is None else (
        f" Not every row was validated on the same users (the two-stage ranker is validated only on the valid "
        f"users its LightGBM was not fitted on), so `valid NDCG@10` and every choice on validation here use each "
        f"row's mean over the **{len(shared)} valid users every row was validated on**; rows without per-user "
        "validation values are left out of those choices. The ranker's value stays optimistic in one way the "
        "others' is not: its LightGBM learned from other users' labels of the same validation period.")
    stats_note += shared_note
    blocks = [Section("Leaderboard (K = 10)", stats_note, [ranked])]
    if margin.height:
        blocks.append(Section("Champion on validation", (
            "The row best on validation NDCG@10 against the runner-up. Each `valid NDCG@10` is the **maximum over "
            "that model's tuning grid** on these same validation users, so it is optimistic (more so for a larger "
            "grid), and the margin is a selection-biased upper estimate. `margin`: mean per-user difference of "
            "validation NDCG@10 on the users both were scored on; `Wilcoxon p`: two-sided signed-rank test of "
            "those differences (no correction)." + shared_note), [margin]))
    if accounting.height:
        blocks.append(Section("Users accounted for", "Test users: total in the test period, evaluated, and dropped "
                              "with the reason, per protocol.", [accounting]))
    if cold.height:
        blocks.append(Section("Cold start (K = 10)", (
            f"Protocol **{protocol}+cold**: only test items never seen in training are relevant, ranked among all "
            "items (history masked). NaN = the model gives every unseen item the same score (no content "
            "signal). A model with per-item ID embeddings scores unseen items with embeddings never trained as "
            "positives, so its figure is measured, and near 0 is what it can do there."), [cold]))
    blocks += [Section("All metrics (K = 10)", tables=[board.drop("model", "variant")], digits=3),
               Section("Dataset and split", tables=[facts_df])]
    blocks += [Section(title, images={title: _img(png)}) for title, png in plots.items()]
    if sampled.height:
        blocks.append(Section("Full ranking vs sampled (HR@10)", tables=[sampled]))
    blocks += sections or []
    return render_html(dataset, intro, blocks), render_markdown(dataset, intro, blocks)


def _thumbnail(path: str | None, size: int = 64) -> str | None:
    """A small inline PNG of an item image, or None when the item has none."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return None
    return _img(buf.getvalue())


def user_example(data: RecDataset, user: int, history: np.ndarray, recommended: list[int], relevant: set[int],
                 generated: str | None = None, recent: int = 5) -> Example:
    """One test user's example row: their `recent` latest items (newest first) and the recommended ones, with
    titles and thumbnails; ✓ / green = an item they bought in the test period."""
    titles = data.items["title"].fill_null("").to_list()
    paths = data.items["image_path"].to_list() if "image_path" in data.items.columns else [None] * len(titles)

    def tile(j: int, hit: bool = False) -> Tile:
        return Tile(titles[j], hit, _thumbnail(paths[j]))

    return Example(str(data.user_ids[user]), [tile(j) for j in list(history[-recent:])[::-1]],
                   [tile(j, j in relevant) for j in recommended], generated)


EXAMPLES_NOTE = ("Each row: the user's most recent items, newest first (blue), then the top recommendations "
                 "(green / ✓ = bought in the test period).")


def qualitative_examples(facts: dict, data: RecDataset, title: str, n_users: int = EXAMPLE_USERS,
                         top: int = REPORT_TOP_K, seed: int = 0) -> Section:
    """A few seeded test users with their most recent items and the model's top recommendations (`facts`: the
    variant's report facts)."""
    picked = subsample(data.eval_inputs("test"), n_users, seed)
    if len(picked.users) == 0:
        return Section(title, "No test users.")
    examples = [user_example(data, u, picked.history[r], facts["top"][str(int(u))][:top],
                             set(picked.relevant[r].tolist())) for r, u in enumerate(picked.users)]
    return Section(title, examples=examples, examples_note=EXAMPLES_NOTE)


def plot_drift(history: list[dict]) -> bytes:
    """Recommendations run to run: mean Jaccard@K with the previous run, share of changed top-10, coverage."""
    fig, ax = pyplot().subplots(figsize=(6, 2.8))
    runs = list(range(1, len(history) + 1))
    for key, label in (("mean_jaccard", "mean Jaccard@K vs previous"), ("top10_changed_share", "top-10 changed"),
                       ("coverage", "catalog coverage")):
        ax.plot(runs, [h.get(key) if h.get(key) is not None else float("nan") for h in history], marker="o",
                label=label)
    ax.set_xlabel("materialization")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("recommendations drift")
    return _png(fig)
