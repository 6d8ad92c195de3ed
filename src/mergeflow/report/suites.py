"""The cross-suite report of a suites file: does a method's rank survive a change of modality?

A method × suite table of normalised scores (each task's merged score over its expert's, averaged over the
suite's tasks), each method's rank within each suite, and the Spearman correlation of the ranks of every
pair of suites over the methods both ran: ``reports/suites.csv`` and ``reports/suites.html``; the page has a
section per suite too (its experts, pre-trained model and methods).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from mergeflow import paths
from mergeflow.errors import MergeflowError
from mergeflow.io import atomic_path, read_json


def metrics_file(suite: str, run: str) -> Path:
    return paths.metrics(run) if suite == "vision" else paths.SuiteLayout(suite).metrics(run)


def table(suites) -> pd.DataFrame:
    """Normalised score (percent) of every configured method (not sweep points) in every suite."""
    columns = {}
    for cfg in suites.configs:
        scores = {}
        for method in cfg.raw["merge"]["methods"]:
            file = metrics_file(cfg.suite, method)
            if not file.is_file():
                raise MergeflowError(f"{file}: not found; run the {cfg.suite} suite's stages ({cfg.source})")
            metrics = read_json(file)
            if "normalized" in metrics:
                scores[method] = 100.0 * float(metrics["normalized"])
        columns[cfg.suite] = pd.Series(scores, dtype=float)
    return pd.DataFrame(columns)


def rank_agreement(frame: pd.DataFrame) -> list[dict]:
    """Spearman's rank correlation for every pair of suites, over the methods both ran."""
    out = []
    names = list(frame.columns)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = frame[[a, b]].dropna()
            rho = float(both[a].rank().corr(both[b].rank())) if len(both) > 2 else float("nan")
            out.append({"suites": f"{a} vs {b}", "methods": len(both), "spearman": rho})
    return out


def suite_section(cfg) -> str:
    """One suite's section: its experts and pre-trained model, and every configured method's mean task score,
    normalised score and chosen scale (the suite's own report has the rest)."""
    e = html.escape

    def numbers(model: str) -> dict:
        file = metrics_file(cfg.suite, model)
        return read_json(file) if file.is_file() else {}

    def fmt(value, scale: float = 1.0) -> str:
        return f"{scale * float(value):.1f}" if isinstance(value, (int, float)) else ""

    # the image suite stores accuracies as fractions, the text suite GLUE metrics in percent
    unit = 100.0 if cfg.suite == "vision" else 1.0
    experts, base = numbers("individual"), numbers("zeroshot")
    rows = "".join(f"<tr><td>{e(m)}</td><td>{fmt(n.get('average'), unit)}</td><td>{fmt(n.get('normalized'), 100)}"
                   f"</td><td>{e(str(n.get('scale', '')))}</td></tr>"
                   for m in cfg.raw["merge"]["methods"] for n in [numbers(m)])
    return (f"<h2>{e(cfg.suite)} suite ({e(cfg.source)}, {e(cfg.raw['name'])})</h2>"
            f"<p>{len(cfg.tasks)} tasks; experts {fmt(experts.get('average'), unit)}, pre-trained "
            f"{fmt(base.get('average'), unit)} (mean task score, %). Full report: "
            f"<a href='{e(_page(cfg.suite))}'>{e(_page(cfg.suite))}</a>.</p>"
            "<table><tr><th>method</th><th>mean task score</th><th>normalised</th><th>scale</th></tr>"
            f"{rows}</table>")


def build_suites_report(suites) -> Path:
    frame = table(suites)
    ranks = frame.rank(ascending=False, method="min")
    agreement = rank_agreement(frame)
    out = frame.copy()
    for suite in frame.columns:
        out[f"{suite}_rank"] = ranks[suite]
    out = out.sort_values(frame.columns[0], ascending=False)
    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths.REPORTS / "suites.csv") as tmp:
        out.to_csv(tmp, index_label="method", float_format="%.4f")
    e = html.escape

    def cell(row, suite: str) -> str:
        return "" if pd.isna(row[suite]) else f"{row[suite]:.1f} (#{int(row[f'{suite}_rank'])})"

    rows = "".join(f"<tr><td>{e(m)}</td>" + "".join(f"<td>{cell(r, s)}</td>" for s in frame.columns) + "</tr>"
                   for m, r in out.iterrows())
    agree = "".join(f"<li>{e(a['suites'])}: Spearman {a['spearman']:.2f} over {a['methods']} methods</li>"
                    for a in agreement)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>mergeflow — {e(suites.name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}</style></head><body>"
            f"<h1>{e(suites.name)}: methods across suites</h1><p>Normalised score (%, merged / expert per task, "
            "averaged over the suite's tasks) and rank within the suite. Each suite's own report: "
            + ", ".join(f"<a href='{e(_page(c.suite))}'>{e(c.suite)}</a>" for c in suites.configs) + "</p>"
            f"<table><tr><th>method</th>{''.join(f'<th>{e(s)}</th>' for s in frame.columns)}</tr>{rows}</table>"
            f"<h2>Does a method's rank survive a change of modality?</h2><ul>{agree}</ul>"
            + "".join(suite_section(c) for c in suites.configs) + "</body></html>")
    with atomic_path(paths.REPORTS / "suites.html") as tmp:
        Path(tmp).write_text(page)
    return paths.REPORTS / "suites.html"


def _page(suite: str) -> str:
    return "report.html" if suite == "vision" else f"{suite}/report.html"
