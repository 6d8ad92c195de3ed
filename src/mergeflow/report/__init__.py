"""The report: results table, figures and a self-contained HTML page with provenance."""

from __future__ import annotations

import base64
import html
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from mergeflow import paths
from mergeflow.io import atomic_path, hash_file, read_json
from mergeflow.report import figures
from mergeflow.report.claims import check_claims

PACKAGES = ("torch", "torchvision", "open_clip_torch", "dvc", "snakemake", "pandas", "matplotlib", "safetensors",
            "numpy", "mergeflow")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def results_table(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table model × task, summary per model) from the metrics and merge reports."""
    rows, summary = [], []
    for model in cfg.models():
        m = read_json(paths.metrics(model))
        for task, v in m["tasks"].items():
            rows.append({"model": model, "task": task, "accuracy": v["accuracy"], "count": v["count"]})
        rec = {"model": model, "average": m["average"], "normalized": m.get("normalized"),
               "drop_std": m.get("drop_std")}
        if model not in ("zeroshot", "individual"):
            rep = read_json(paths.merge_report(model))
            rec.update({"method": rep["method"], "scale_name": rep["scale"]["name"], "scale": rep["scale"]["value"],
                        "scale_chosen_by": rep["scale"]["chosen_by"],
                        "scale_on_grid_edge": rep["scale"].get("on_edge", ""), "merge_wall_s": rep["wall_s"],
                        "sweep": "" if not rep["sweep"] else f"{rep['sweep'][0]}={rep['sweep'][1]}"})
        summary.append(rec)
    return pd.DataFrame(rows), pd.DataFrame(summary)


def _sweep_points(cfg, summary: pd.DataFrame) -> pd.DataFrame:
    points = []
    for method, params in cfg.raw["sweeps"].items():
        for param, values in params.items():
            base = summary[summary["model"] == method]
            base_value = cfg.run(method).hparams[param]
            if base_value != "auto" and len(base):
                points.append({"method": method, "param": param, "value": float(base_value),
                               "average": float(base["average"].iloc[0])})
            elif len(base) and param == read_json(paths.merge_report(method))["scale"]["name"]:
                points.append({"method": method, "param": param, "value": float(base["scale"].iloc[0]),
                               "average": float(base["average"].iloc[0])})
            for value in values:
                name = f"{method}--{param}-{value}"
                row = summary[summary["model"] == name]
                if len(row):
                    points.append({"method": method, "param": param, "value": float(value),
                                   "average": float(row["average"].iloc[0])})
    return pd.DataFrame(points)


def _lot_exemplar_runs(cfg) -> dict[int, str]:
    runs = {}
    if "lot" in cfg.raw["merge"]["methods"]:
        runs[int(cfg.run("lot").hparams["exemplars"])] = "lot"
        for n in cfg.raw["sweeps"].get("lot", {}).get("exemplars", []):
            runs[int(n)] = f"lot--exemplars-{n}"
    return runs


def _claims_html(summary: pd.DataFrame, cfg) -> str:
    rows = "".join(
        f'<tr><td style="text-align:left">{html.escape(c.text)}</td><td style="text-align:left">'
        f'{html.escape(c.source)}</td><td class="{c.outcome.replace(" ", "-")}">{c.outcome}</td>'
        f'<td style="text-align:left">{html.escape(c.evidence)}</td></tr>'
        for c in check_claims(summary, _lot_exemplar_runs(cfg)))
    return ("<table><tr><th>claim</th><th>source</th><th>outcome</th><th>measured (test accuracy %)</th></tr>"
            f"{rows}</table>")


def _task_vectors_html(cfg) -> str:
    geo = read_json(paths.metrics("individual")).get("task_vectors")
    if not geo:
        return "<p>(not recorded)</p>"
    ratio = pd.Series(geo["norm_ratio"]) * 100
    cos = pd.DataFrame(index=cfg.tasks, columns=cfg.tasks, dtype=float)
    for t in cfg.tasks:
        cos.loc[t, t] = 1.0
    for pair, v in geo["cosine"].items():
        a, b = pair.split("|")
        cos.loc[a, b] = cos.loc[b, a] = v
    off = [abs(v) for v in geo["cosine"].values()]
    return (f"<p>‖T<sub>k</sub>‖ / ‖θ<sub>pre</sub>‖ of the image encoder (%): "
            f"{html.escape(', '.join(f'{t} {r:.2f}' for t, r in ratio.items()))}; largest {ratio.max():.2f}. "
            f"Pairwise cosines of the task vectors: largest |cos| {max(off, default=0):.3f}, mean |cos| "
            f"{sum(off) / max(1, len(off)):.3f}.</p>" + cos.round(3).to_html(na_rep=""))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def build_report(cfg) -> Path:
    """Write results.csv, the figures and report.html (no network needed to read it)."""
    long, summary = results_table(cfg)
    wide = long.pivot(index="model", columns="task", values="accuracy").reindex(summary["model"])
    table = summary.set_index("model").join(wide).reset_index()
    with atomic_path(paths.REPORTS / "results.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    figs = [figures.tasks_figure(cfg),
            figures.grouped_bars(long[~long["model"].str.contains("--")], paths.FIGURES / "accuracy_bars.png"),
            figures.heatmap(long, paths.FIGURES / "heatmap.png")]
    points = _sweep_points(cfg, summary)
    if len(points):
        figs.append(figures.sensitivity(points, paths.FIGURES / "sensitivity.png"))
    if "cat" in cfg.raw["merge"]["methods"]:
        units = read_json(paths.merge_report("cat"))["diagnostics"].get("units", {})
        if units:
            figs.append(figures.cat_energy(units, paths.FIGURES / "cat_energy.png"))
    inputs = {}
    for model in cfg.models():
        for p in (paths.metrics(model), paths.merge_report(model)):
            if Path(p).is_file():
                inputs[str(p)] = hash_file(p)
                for k, v in read_json(p).get("inputs", {}).items():
                    inputs[k] = v
    device = sorted({read_json(paths.metrics(m)).get("device", "?") for m in cfg.models()})
    show = table.copy()
    for col in ["average", "normalized", "drop_std", *cfg.tasks]:
        show[col] = (show[col] * 100).round(1)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mergeflow report: {html.escape(cfg.raw['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} code,pre{{font-size:11px}}
.held{{color:#070}} .failed{{color:#b00;font-weight:bold}}</style></head><body>
<h1>mergeflow report — configuration <code>{html.escape(cfg.raw['name'])}</code></h1>
<p>Top-1 test accuracy (%) per task; <b>normalized</b> = merged / individual accuracy per task, averaged;
<b>drop_std</b> = standard deviation over tasks of (individual − merged) accuracy. The scale column says which
value each method used and whether it was fixed or chosen on the validation splits over
<code>evaluate.scale_grid</code> = {html.escape(str(cfg.evaluate.scale_grid))}; a chosen scale on the grid's
edge is flagged <b>True</b> in <code>scale_on_grid_edge</code> (the grid, not the method, may limit it).</p>
{show.to_html(index=False, na_rep="")}
<h2>The papers' claims on this run</h2>
<p>Each claim of the CAT and LOT papers that this run can test, with its outcome. Failed claims are shown as
measured, not tuned away.</p>
{_claims_html(summary, cfg)}
<h2>Task vectors</h2>
{_task_vectors_html(cfg)}
<h2>Figures</h2>{''.join(_img(f) for f in figs)}
<h2>Provenance</h2>
<p>git commit <code>{_git_commit()}</code>; device(s) {html.escape(', '.join(device))}; Python {platform.python_version()}
on {html.escape(platform.platform())}</p>
<h3>Package versions</h3><pre>{html.escape(json.dumps(_versions(), indent=1))}</pre>
<h3>Parameters</h3><pre>{html.escape(json.dumps(cfg.raw, indent=1))}</pre>
<h3>Input artifacts (SHA-256)</h3><pre>{html.escape(json.dumps(inputs, indent=1, sort_keys=True))}</pre>
</body></html>"""
    with atomic_path(paths.REPORTS / "report.html") as tmp:
        tmp.write_text(page)
    return paths.REPORTS / "report.html"
