"""The report: results table, figures and one self-contained HTML page (Jinja2 template) with provenance.

The page reads only the pipeline's outputs: ``reports/metrics`` (numbers), ``reports/merge`` (how each merge
ran), ``reports/evaluation`` (devices, inputs, task-vector geometry) and, for the papers' benchmark, the
published numbers of ``paper_results.yaml``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jinja2
import pandas as pd
import yaml

from mergeflow import paths
from mergeflow.errors import MergeflowError
from mergeflow.io import atomic_path, hash_file, read_json
from mergeflow.merge import METHODS
from mergeflow.report import figures, provenance
from mergeflow.report.claims import check_claims

HERE = Path(__file__).parent
REFERENCES = ("zeroshot", "individual")
LABELS = {"zeroshot": "zero-shot", "individual": "individual experts"}
SCALE_SYMBOLS = {"alpha": "α", "lambda": "λ"}


def _scale_text(name: str | None, value) -> str:
    if not isinstance(name, str) or value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{SCALE_SYMBOLS.get(name, name)} = {value:g}" if isinstance(value, (int, float)) else f"{name} = {value}"


# the keys the report reads, with their types: another shape is one line naming the file and the key
NUMBER = (int, float)
METRICS_SHAPE = {"accuracy": dict, "average": NUMBER}
MERGE_REPORT_SHAPE = {"method": str, "sweep": (list, type(None)), "wall_s": NUMBER,
                      "scale": {"name": (str, type(None)), "chosen_by": (str, type(None))}}


def results_table(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table model × task, summary with one row per model) from the metrics and merge reports."""
    rows, summary = [], []
    for model in cfg.models():
        m = read_json(paths.metrics(model), METRICS_SHAPE)
        rows += [{"model": model, "task": t, "accuracy": a} for t, a in m["accuracy"].items()]
        rec = {"model": model, "label": LABELS.get(model, model), "kind": "reference", "average": m["average"],
               "normalized": m.get("normalized"), "drop_std": m.get("drop_std")}
        if model not in REFERENCES:
            rep = read_json(paths.merge_report(model), MERGE_REPORT_SHAPE)
            if rep["method"] not in METHODS:
                raise MergeflowError(f"{paths.merge_report(model)}: method {rep['method']!r} is not registered")
            spec = METHODS[rep["method"]]
            sweep = f"{rep['sweep'][0]} = {rep['sweep'][1]}" if rep["sweep"] else ""
            rec.update({"method": rep["method"], "label": spec.pretty + (f" ({sweep})" if sweep else ""),
                        "kind": _kind(spec, rep), "task_aware": spec.task_aware, "training": spec.training,
                        "extra_bytes": rep.get("extra_bytes", 0),
                        "scale_name": rep["scale"]["name"], "scale": rep["scale"]["value"],
                        "scale_chosen_by": rep["scale"]["chosen_by"] if rep["scale"]["name"] else "",
                        "scale_on_grid_edge": rep["scale"].get("on_edge", ""), "merge_wall_s": rep["wall_s"],
                        "sweep": sweep})
        summary.append(rec)
    return pd.DataFrame(rows), pd.DataFrame(summary)


def _kind(spec, rep: dict) -> str:
    kind = "task-aware" if spec.task_aware else "single model"
    if spec.training:  # the papers train on the test images without their labels: say which split it was
        kind += f", trained on unlabeled {rep.get('unlabeled_split') or 'test'} images"
    return kind


def _sweep_points(cfg, summary: pd.DataFrame) -> pd.DataFrame:
    """Every swept (method, parameter, value) with its average; the main run's own value marked ``main``."""
    points = []
    for method, params in cfg.raw["sweeps"].items():
        base = summary[summary["model"] == method]
        if base.empty:
            continue
        for param, values in params.items():
            value = cfg.run(method).hparams[param]
            if value == "auto" and param == base["scale_name"].iloc[0]:
                value = base["scale"].iloc[0]
            if not isinstance(value, int | float) or not all(isinstance(v, int | float) for v in values):
                continue  # a categorical sweep (AdaMerging's granularity) is a row of the table, not a curve
            if value != "auto":
                points.append({"method": method, "param": param, "value": float(value),
                               "average": float(base["average"].iloc[0]), "main": True})
            for v in values:
                row = summary[summary["model"] == f"{method}--{param}-{v}"]
                if len(row):
                    points.append({"method": method, "param": param, "value": float(v),
                                   "average": float(row["average"].iloc[0]), "main": False})
    return pd.DataFrame(points)


def _lot_exemplar_runs(cfg) -> dict[int, str]:
    runs = {}
    if "lot" in cfg.raw["merge"]["methods"]:
        runs[int(cfg.run("lot").hparams["exemplars"])] = "lot"
        for n in cfg.raw["sweeps"].get("lot", {}).get("exemplars", []):
            runs[int(n)] = f"lot--exemplars-{n}"
    return runs


def task_vector_geometry(cfg) -> dict | None:
    """‖T_k‖/‖θ_pre‖ per task and the pairwise cosine table, from the experts' evaluation record."""
    geo = read_json(paths.evaluation("individual")).get("task_vectors")
    if not geo:
        return None
    cos = pd.DataFrame(index=cfg.tasks, columns=cfg.tasks, dtype=float)
    for t in cfg.tasks:
        cos.loc[t, t] = 1.0
    for pair, v in geo["cosine"].items():
        a, b = pair.split("|")
        cos.loc[a, b] = cos.loc[b, a] = v
    off = [abs(v) for v in geo["cosine"].values()]
    return {"ratio": {t: 100 * r for t, r in geo["norm_ratio"].items()},
            "max_ratio": 100 * max(geo["norm_ratio"].values()), "max_cos": max(off, default=0.0),
            "mean_cos": sum(off) / max(1, len(off)), "cosine": cos}


def paper_comparison(cfg, summary: pd.DataFrame, long: pd.DataFrame) -> dict | None:
    """Ours against the published numbers, when the run is the papers' benchmark (same model, same tasks)."""
    published = yaml.safe_load((HERE / "paper_results.yaml").read_text())
    table = published.get(cfg.raw["model"]["arch"])
    if table is None or list(cfg.tasks) != published["tasks"]:
        return None
    acc = long.pivot(index="model", columns="task", values="accuracy")
    rows = []
    for model, values in table.items():
        if model not in set(summary["model"]):
            continue
        ours = [100 * float(acc.loc[model, t]) for t in cfg.tasks] + [
            100 * float(summary.loc[summary["model"] == model, "average"].iloc[0])]
        rows.append({"model": model, "label": summary.loc[summary["model"] == model, "label"].iloc[0],
                     "cells": [(o, p, None if p is None else o - p) for o, p in zip(ours, values, strict=True)]})
    return {"source": published["source"], "arch": cfg.raw["model"]["arch"], "rows": rows}


def _validation_curves(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    curves = {}
    for _, row in summary[(summary["kind"] != "reference") & (summary["sweep"] == "")].iterrows():
        scale = read_json(paths.merge_report(row["model"]))["scale"]
        if scale.get("chosen_by") == "validation":
            df = pd.DataFrame(scale["grid"])
            df["chosen"] = df["scale"] == scale["value"]
            curves[f"{row['label']} ({SCALE_SYMBOLS.get(scale['name'], scale['name'])})"] = df
    return curves


def _marked(merges: pd.DataFrame) -> pd.DataFrame:
    """The runs with task-aware results labelled as such (a figure has no table block to keep them apart)."""
    out = merges.copy()
    aware = out["task_aware"].fillna(False).astype(bool) if "task_aware" in out else False
    out.loc[aware, "label"] = out.loc[aware, "label"] + " [task-aware]"
    return out


def _image(path: Path, caption: str) -> dict:
    return {"caption": caption, "name": path.name,
            "src": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}


def _figures(cfg, summary: pd.DataFrame, long: pd.DataFrame, order: list[str], refs: dict) -> list[dict]:
    merges = summary[summary["kind"] != "reference"]
    acc = long.pivot(index="model", columns="task", values="accuracy").reindex(order)
    acc.index = [summary.set_index("model").loc[m, "label"] for m in acc.index]
    figs = [_image(figures.heatmap(acc, paths.FIGURES / "heatmap.png"),
                   "Test accuracy per run and task (%), in the order of the summary."),
            _image(figures.ranked_bars(_marked(merges[merges["sweep"] == ""]), refs, paths.FIGURES / "ranked.png"),
                   "Average test accuracy of every merge, best on top; zero-shot and the experts as lines; "
                   "[task-aware] results need the task at inference.")]
    points = _sweep_points(cfg, summary)
    if len(points):
        figs.append(_image(figures.sensitivity(points, refs, paths.FIGURES / "sensitivity.png"),
                           "Average test accuracy against each swept hyper-parameter (★ the main run)."))
    curves = _validation_curves(summary)
    if curves:
        figs.append(_image(figures.validation_curves(curves, paths.FIGURES / "validation.png"),
                           "Validation curve of every scale set to auto: normalised accuracy on the validation "
                           "splits over evaluate.scale_grid; ★ the value each method then used on test."))
    if "cat" in set(summary["model"]):
        units = read_json(paths.merge_report("cat"))["diagnostics"].get("units", {})
        if units:
            figs.append(_image(figures.cat_energy(units, paths.FIGURES / "cat_energy.png"),
                               "CAT: per unit (q/k/v, projections, MLP layers, LayerNorms), the share of the "
                               "positive eigenvalue mass of the conflict objective that its basis captures."))
    figs.append(_image(figures.tasks_figure(cfg), "The tasks: the first prepared training images, with their "
                                                  "class names."))
    return figs


def _inputs(cfg) -> dict[str, str]:
    """SHA-256 of every metrics, merge and evaluation file and of the artifacts they record as inputs."""
    out = {}
    for model in cfg.models():
        for p in (paths.metrics(model), paths.merge_report(model), paths.evaluation(model)):
            if Path(p).is_file():
                out[str(p)] = hash_file(p)
                out.update(read_json(p).get("inputs", {}) if p != paths.metrics(model) else {})
    return dict(sorted(out.items()))


def build_report(cfg) -> Path:
    """Write results.csv, the figures and report.html (no network needed to read it)."""
    long, summary = results_table(cfg)
    merges = summary[summary["kind"] != "reference"].sort_values("average", ascending=False)
    main = merges[merges["sweep"] == ""]
    order = [*REFERENCES, *main["model"], *merges[merges["sweep"] != ""]["model"]]
    wide = long.pivot(index="model", columns="task", values="accuracy").reindex(order)
    table = summary.set_index("model").reindex(order).join(wide[list(cfg.tasks)]).reset_index()
    with atomic_path(paths.REPORTS / "results.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    refs = {m: float(summary.loc[summary["model"] == m, "average"].iloc[0]) for m in REFERENCES}
    git = provenance.git_state()
    devices = sorted({read_json(paths.evaluation(m)).get("device", "?") for m in cfg.models()})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: "" if x is None or pd.isna(x) else f"{100 * x:.1f}"
    env.filters["scale_text"] = lambda row: _scale_text(row.get("scale_name"), row.get("scale"))
    rows = table.to_dict("records")
    page = env.get_template("report.html.j2").render(
        name=cfg.raw["name"], tasks=list(cfg.tasks), grid=list(cfg.evaluate.scale_grid),
        references=[r for r in rows if r["model"] in REFERENCES],
        ranked=[r for r in rows if r["model"] in set(main["model"]) and not r.get("task_aware")],
        task_aware=[r for r in rows if r["model"] in set(main["model"]) and r.get("task_aware")],
        sweeps=[r for r in rows if r["model"] in set(merges[merges["sweep"] != ""]["model"])],
        rows=rows, claims=check_claims(summary, _lot_exemplar_runs(cfg)), geometry=task_vector_geometry(cfg),
        paper=paper_comparison(cfg, summary, long), figures=_figures(cfg, summary, long, order, refs),
        git=git, devices=devices, platform=provenance.platform_line(), versions=provenance.versions(),
        params=json.dumps(cfg.raw, indent=1), lock=provenance.dvc_lock_inputs(), inputs=_inputs(cfg))
    with atomic_path(paths.REPORTS / "report.html") as tmp:
        tmp.write_text(page)
    return paths.REPORTS / "report.html"
