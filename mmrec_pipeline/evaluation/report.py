"""The per-dataset report: leaderboard, per-K curves and metric bars (matplotlib PNGs), dataset and split
figures. Rendered once as Markdown (Dagster metadata) and once as a self-contained HTML file."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

LEADERBOARD_METRICS = ["ndcg", "hr", "recall", "precision", "mrr", "map", "coverage", "diversity", "novelty"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def full_ranking(metrics: pl.DataFrame) -> pl.DataFrame:
    return metrics.filter(~pl.col("protocol").str.contains("sampled") & ~pl.col("protocol").str.contains("@"))


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
    t = metrics.filter((pl.col("metric") == "hr") & (pl.col("k") == k) & ~pl.col("protocol").str.contains("@"))
    if t.height == 0:
        return t
    t = t.with_columns(pl.when(pl.col("protocol").str.contains("sampled")).then(pl.col("protocol"))
                       .otherwise(pl.lit("full")).alias("kind"), (pl.col("model") + "/" + pl.col("variant")).alias("name"))
    return t.pivot(on="kind", index="name", values="value", aggregate_function="first").sort("name")


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
                 sections: list[tuple[str, str, str]] | None = None) -> tuple[str, str]:
    """(html, markdown) for one dataset. `facts`: dataset and split figures; `sections`: extra
    (title, markdown, html) blocks that other stages add (e.g. strategy tables, qualitative examples)."""
    board = leaderboard(metrics)
    plots = {"NDCG@10 by model": plot_bars(board, "ndcg", f"{dataset}: NDCG@10 (full catalog)")}
    if "coverage" in board.columns:
        plots["Catalog coverage@10"] = plot_bars(board, "coverage", "catalog coverage@10")
    plots["NDCG@K"] = plot_per_k(metrics, "ndcg")
    plots["Recall@K"] = plot_per_k(metrics, "recall")
    sampled = sampled_vs_full(metrics)
    facts_df = pl.DataFrame({"figure": list(facts), "value": [str(v) for v in facts.values()]})
    intro = (f"Protocol: **{protocol}** split, every model ranks the **whole catalog**; items in the user's history "
             "are excluded unless the registry says repeat purchases count. Metrics are averaged over test users with "
             "history and at least one relevant item. The sampled rows exist only to show how sampling inflates numbers.")
    md = [f"# {dataset}: evaluation report", intro, "## Leaderboard (K = 10)", md_table(board.drop("model", "variant")),
          "## Dataset and split", md_table(facts_df)]
    md += [f"## {t}\n![{t}]({_img(p)})" for t, p in plots.items()]
    if sampled.height:
        md += ["## Full ranking vs sampled (HR@10)", md_table(sampled)]
    h = [f"<h1>{html.escape(dataset)}: evaluation report</h1><p>{html.escape(intro).replace('**', '')}</p>",
         "<h2>Leaderboard (K = 10)</h2>", html_table(board.drop("model", "variant")),
         "<h2>Dataset and split</h2>", html_table(facts_df)]
    h += [f"<h2>{html.escape(t)}</h2><img src='{_img(p)}' alt='{html.escape(t)}'>" for t, p in plots.items()]
    if sampled.height:
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
