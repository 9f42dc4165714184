"""The per-dataset report: the leaderboard grouped by model family with bootstrap CIs and paired-test markers
(significance.py), the accounting of test users, the cold-start table, the accuracy-coverage Pareto plot, per-K
curves and metric bars (matplotlib PNGs), dataset and split figures. Rendered once as Markdown (Dagster metadata)
and once as a self-contained HTML file."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from mmrec_pipeline.evaluation.protocols import COLD_UNSCORABLE, is_main
from mmrec_pipeline.evaluation.significance import ALPHA, bootstrap_ci, paired_tests, pareto_front

LEADERBOARD_METRICS = ["ndcg", "hr", "recall", "precision", "mrr", "map", "coverage", "diversity", "novelty"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
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
    t = metrics.filter((pl.col("metric") == "hr") & (pl.col("k") == k) & ~pl.col("protocol").str.contains("[@]|cold"))
    if t.height == 0:
        return t
    t = t.with_columns(pl.when(pl.col("protocol").str.contains("sampled")).then(pl.col("protocol"))
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


def leaderboard_with_ci(metrics: pl.DataFrame, per_user: pl.DataFrame | None, families: dict[str, str] | None = None,
                        k: int = 10, n_resamples: int = 1000) -> pl.DataFrame:
    """The leaderboard a reader can compare rows of: grouped by model family (best NDCG@k first inside each),
    NDCG@k and Recall@k with 95% bootstrap CIs over users, and Wilcoxon + Holm markers against the best model
    and against the best popularity variant. `seeds` says how many training seeds each row averages."""
    board = leaderboard(metrics, k)
    families = families or {}
    board = board.with_columns(pl.col("model").replace_strict(families, default="other").alias("family"))
    cis: dict[str, dict[str, tuple[float, float]]] = {}
    vs_best = vs_pop = {}
    best = pop = None
    if per_user is not None and per_user.height:
        named = per_user.with_columns((pl.col("model") + "/" + pl.col("variant")).alias("name"))
        for (name,), group in named.group_by("name"):
            cis[name] = {m: bootstrap_ci(group[f"{m}@{k}"].to_numpy(), n_resamples)
                         for m in ("ndcg", "recall") if f"{m}@{k}" in group.columns}
        ranked = board.filter(pl.col("name").is_in(list(cis)))
        if ranked.height:
            best = ranked["name"][0]
            pops = ranked.filter(pl.col("model") == "popularity")["name"]
            pop = pops[0] if len(pops) else None
            metric = f"ndcg@{k}"
            vs_best = {r["name"]: r for r in paired_tests(per_user, metric, best).iter_rows(named=True)}
            if pop:
                vs_pop = {r["name"]: r for r in paired_tests(per_user, metric, pop).iter_rows(named=True)}
    seeds = (per_user.group_by(["model", "variant"]).agg(pl.col("seed").n_unique()).rows()
             if per_user is not None and "seed" in per_user.columns else [])
    n_seeds = {f"{m}/{v}": n for m, v, n in seeds}
    rows = []
    for r in board.iter_rows(named=True):
        name = r["name"]
        ci = cis.get(name, {})
        rows.append({
            "family": r["family"], "model": name,
            f"NDCG@{k} [95% CI]": _fmt_ci(r.get("ndcg"), ci.get("ndcg")),
            f"Recall@{k} [95% CI]": _fmt_ci(r.get("recall"), ci.get("recall")),
            f"HR@{k}": _fmt_ci(r.get("hr"), None), f"coverage@{k}": _fmt_ci(r.get("coverage"), None),
            "vs best": "best" if name == best else _marker(*_pd(vs_best.get(name))),
            "vs popularity": "reference" if name == pop else (_marker(*_pd(vs_pop.get(name))) if pop else "n/a"),
            "seeds": n_seeds.get(name, 1)})
    order = {f: i for i, f in enumerate(dict.fromkeys(families.values()))}
    out = pl.DataFrame(rows, schema_overrides={"seeds": pl.Int64}) if rows else pl.DataFrame()
    if out.height:
        out = out.with_columns(pl.col("family").replace_strict(order, default=len(order)).alias("_f"),
                               pl.int_range(pl.len()).alias("_r")).sort(["_f", "_r"]).drop("_f", "_r")
    return out


def _pd(row: dict | None) -> tuple[float | None, float | None]:
    return (None, None) if row is None else (row["p_holm"], row["diff"])


def user_accounting(metrics: pl.DataFrame) -> pl.DataFrame:
    """protocol, count, users: test users total / evaluated / dropped with the reason, per protocol. One value
    when every model saw the same users (they do under one protocol), else the range over models."""
    t = metrics.filter(pl.col("metric").str.starts_with("users_") & ~pl.col("protocol").str.contains("sampled"))
    if t.height == 0:
        return pl.DataFrame()
    g = t.group_by(["protocol", "metric"], maintain_order=True).agg(pl.col("value").min().alias("lo"),
                                                                      pl.col("value").max().alias("hi"))
    return g.select("protocol", pl.col("metric").str.replace("users_", "").str.replace(":", ": ").alias("users"),
                    pl.when(pl.col("lo") == pl.col("hi")).then(pl.col("lo").cast(pl.Int64).cast(pl.Utf8))
                    .otherwise(pl.format("{}–{} (differs by model)", pl.col("lo").cast(pl.Int64),
                                         pl.col("hi").cast(pl.Int64))).alias("count"))


def cold_start_table(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    """Per model: NDCG / Recall / HR @k on the `+cold` protocol (test items never seen in training, ranked
    among all items), with the reason where the model cannot score unseen items."""
    t = metrics.filter(pl.col("protocol").str.ends_with("+cold")).with_columns(
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


def plot_accuracy_coverage(board: pl.DataFrame, families: dict[str, str] | None = None, k: int = 10) -> bytes:
    """NDCG@k against catalog coverage@k, one point per model, with the Pareto frontier (no other model is at
    least as accurate and covers at least as much of the catalog)."""
    b = board.filter(pl.col("ndcg").is_not_null() & pl.col("coverage").is_not_null()
                     & pl.col("ndcg").is_not_nan() & pl.col("coverage").is_not_nan())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fam = [(families or {}).get(m, "other") for m in b["model"].to_list()]
    for f in dict.fromkeys(fam):
        sel = [i for i, x in enumerate(fam) if x == f]
        ax.scatter(b["coverage"].to_numpy()[sel], b["ndcg"].to_numpy()[sel], label=f, s=25)
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
    fig, ax = plt.subplots(figsize=(7, 0.3 * b.height + 1.2))
    ax.barh(b["name"].to_list(), b[metric].to_list(), color="#4C72B0")
    ax.set_xlabel(metric)
    ax.set_title(title)
    return _png(fig)


def plot_per_k(metrics: pl.DataFrame, metric: str, top: int = 10) -> bytes:
    """metric@K for K = 5, 10, 20, one line per model/variant (the `top` best at K=10)."""
    t = full_ranking(metrics).filter(pl.col("metric") == metric).with_columns(
        (pl.col("model") + "/" + pl.col("variant")).alias("name"))
    best = t.filter(pl.col("k") == 10).sort("value", descending=True)["name"].head(top).to_list()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in best:
        s = t.filter(pl.col("name") == name).sort("k")
        ax.plot(s["k"].to_list(), s["value"].to_list(), marker="o", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric}@K")
    ax.set_xticks(sorted(t["k"].unique().to_list()))
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{metric}@K, full-catalog ranking")
    return _png(fig)


def plot_learning_curves(curves: dict[str, list[dict]], title: str) -> bytes:
    """Training loss and validation NDCG@10 by epoch, one line per variant."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for variant, rows in curves.items():
        a1.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], label=variant)
        v = [r for r in rows if "valid_ndcg@10" in r]
        a2.plot([r["epoch"] for r in v], [r["valid_ndcg@10"] for r in v], marker="o", label=variant)
    a1.set_title(f"{title}: training loss")
    a2.set_title("validation NDCG@10")
    for a in (a1, a2):
        a.set_xlabel("epoch")
        a.legend(fontsize=7)
    return _png(fig)


def md_table(df: pl.DataFrame, digits: int = 4) -> str:
    fmt = [(lambda v: "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v)))]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt[0](v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)


def html_table(df: pl.DataFrame, digits: int = 4) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(
        f"<td>{'' if v is None else (f'{v:.{digits}f}' if isinstance(v, float) else html.escape(str(v)))}</td>"
        for v in row) + "</tr>" for row in df.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def build_report(dataset: str, metrics: pl.DataFrame, facts: dict, protocol: str,
                 sections: list[tuple[str, str, str]] | None = None, per_user: pl.DataFrame | None = None,
                 families: dict[str, str] | None = None) -> tuple[str, str]:
    """(html, markdown) for one dataset. `facts`: dataset and split figures; `sections`: extra
    (title, markdown, html) blocks that other stages add (e.g. strategy tables, qualitative examples);
    `per_user`: the models' per-user test metrics (CIs and paired tests); `families`: {model: family}."""
    board = leaderboard(metrics)
    ranked = leaderboard_with_ci(metrics, per_user, families)
    plots = {"NDCG@10 by model": plot_bars(board, "ndcg", f"{dataset}: NDCG@10 (full catalog)")}
    if "coverage" in board.columns:
        plots["Accuracy vs coverage"] = plot_accuracy_coverage(board, families)
        plots["Catalog coverage@10"] = plot_bars(board, "coverage", "catalog coverage@10")
    plots["NDCG@K"] = plot_per_k(metrics, "ndcg")
    plots["Recall@K"] = plot_per_k(metrics, "recall")
    sampled = sampled_vs_full(metrics)
    accounting = user_accounting(metrics)
    cold = cold_start_table(metrics)
    facts_df = pl.DataFrame({"figure": list(facts), "value": [str(v) for v in facts.values()]})
    intro = (f"Protocol: **{protocol}** split, every model ranks the **whole catalog**; items in the user's history "
             "are excluded unless the registry says repeat purchases count. Metrics are averaged over test users with "
             "history and at least one relevant item (the user accounting below says how many and why the others "
             "were left out). The sampled rows exist only to show how sampling inflates numbers.")
    if protocol == "recbole":
        intro += (" Under **recbole** (RecBole's protocol, for comparisons with RecBole and papers): 5-core on users "
                  "and items, leave-one-out, the pool is the items left, users whose test items are all repeats are "
                  "kept and score 0, history is masked for general models but not for sequential ones.")
    stats_note = (f"Full-catalog ranking under **{protocol}**, K = 10, grouped by model family. Brackets: 95% "
                  "percentile bootstrap CI over test users (1000 resamples, seed 0). `vs best` / `vs popularity`: "
                  "two-sided Wilcoxon signed-rank test of per-user NDCG@10 against the best row / the best popularity "
                  f"variant, Holm-corrected over the rows compared with each reference; ▲ / ▼ = significantly "
                  f"better / worse at α = {ALPHA}, ≈ = not significant. `seeds`: training seeds behind the row "
                  "(1 = single-seed).")
    if per_user is None or not per_user.height:
        stats_note += " No per-user values were found, so no CI or test is shown (n/a)."
    md = [f"# {dataset}: evaluation report", intro, "## Leaderboard (K = 10)", stats_note, md_table(ranked)]
    h = [f"<h1>{html.escape(dataset)}: evaluation report</h1><p>{html.escape(intro).replace('**', '')}</p>",
         "<h2>Leaderboard (K = 10)</h2>", f"<p>{html.escape(stats_note).replace('**', '')}</p>", html_table(ranked)]
    if accounting.height:
        note = "Test users: total in the test period, evaluated, and dropped with the reason, per protocol."
        md += ["## Users accounted for", note, md_table(accounting)]
        h += ["<h2>Users accounted for</h2>", f"<p>{note}</p>", html_table(accounting)]
    if cold.height:
        note = (f"Protocol **{protocol}+cold**: only test items never seen in training are relevant, ranked among all "
                "items (history masked). NaN = the model gives every unseen item the same score (no content "
                "signal). A model with per-item ID embeddings scores unseen items with embeddings never trained as "
                "positives, so its figure is measured, and near 0 is what it can do there.")
        md += ["## Cold start (K = 10)", note, md_table(cold)]
        h += ["<h2>Cold start (K = 10)</h2>", f"<p>{html.escape(note).replace('**', '')}</p>", html_table(cold)]
    md += ["## All metrics (K = 10)", md_table(board.drop("model", "variant"), digits=3),
           "## Dataset and split", md_table(facts_df)]
    h += ["<h2>All metrics (K = 10)</h2>", html_table(board.drop("model", "variant"), digits=3),
          "<h2>Dataset and split</h2>", html_table(facts_df)]
    md += [f"## {t}\n![{t}]({_img(p)})" for t, p in plots.items()]
    h += [f"<h2>{html.escape(t)}</h2><img src='{_img(p)}' alt='{html.escape(t)}'>" for t, p in plots.items()]
    if sampled.height:
        md += ["## Full ranking vs sampled (HR@10)", md_table(sampled)]
        h += ["<h2>Full ranking vs sampled (HR@10)</h2>", html_table(sampled)]
    for title, smd, shtml in sections or []:
        md += [f"## {title}", smd]
        h += [f"<h2>{html.escape(title)}</h2>", shtml]
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}</style>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(dataset)} report</title>{style}" \
           f"</head><body>{''.join(h)}</body></html>"
    return page, "\n\n".join(md)


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


def qualitative_examples(model, data, title: str, n_users: int = 3, recent: int = 5, top: int = 5,
                         seed: int = 0) -> tuple[str, str, str]:
    """(title, markdown, html): for a few test users, their most recent items and the model's top
    recommendations (✓ marks a test-period item), with titles and thumbnails."""
    import numpy as np
    import torch

    inputs = data.eval_inputs("test")
    if len(inputs.users) == 0:
        return title, "_no test users_", "<p>no test users</p>"
    pick = np.random.default_rng(seed).choice(len(inputs.users), min(n_users, len(inputs.users)), replace=False)
    titles = data.items["title"].fill_null("").to_list()
    paths = data.items["image_path"].to_list()
    md, h = [], []
    for i in sorted(pick):
        user, hist, rel = inputs.users[i:i + 1], inputs.history[i], set(inputs.relevant[i].tolist())
        with torch.no_grad():
            scores = model.score(user, [hist])[0].float()
        if inputs.exclude_history:
            scores[torch.as_tensor(hist, dtype=torch.long)] = -torch.inf
        recs = torch.topk(scores, top).indices.tolist()
        rows = [("recent", j, False) for j in hist[-recent:][::-1]] + [("recommended", j, j in rel) for j in recs]
        md.append(f"**user {data.user_ids[user[0]]}** — recent: " + "; ".join(titles[j] for j in hist[-recent:][::-1])
                  + " → recommended: " + "; ".join(("✓ " if j in rel else "") + titles[j] for j in recs))
        cells = []
        for kind, j, hit in rows:
            thumb = _thumbnail(paths[j])
            img = f"<img src='{thumb}' width=64><br>" if thumb else ""
            colour = "#d4f4d4" if hit else ("#eef" if kind == "recent" else "#fff")
            cells.append(f"<td style='background:{colour};text-align:center;width:90px'>{img}"
                         f"<small>{html.escape(titles[j][:40])}</small></td>")
        h.append(f"<p><b>user {html.escape(str(data.user_ids[user[0]]))}</b>: {recent} most recent items (blue), "
                 f"top-{top} recommendations (green = bought in the test period)</p><table><tr>{''.join(cells)}</tr></table>")
    return title, "\n\n".join(md), "".join(h)


def plot_drift(history: list[dict]) -> bytes:
    """Recommendations run to run: mean Jaccard@K with the previous run, share of changed top-10, coverage."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
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
