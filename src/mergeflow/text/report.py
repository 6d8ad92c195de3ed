"""The text suites' reports: every model's headline per task and the regime checked — for the text suite the
papers' regime and the seeds' GLUE claims (LOT's Table 15 order) tested one by one (``reports/text/``), for the
generation suite its own regime and the rule each method applied to the tied token table (``reports/lm/``)."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.errors import MergeflowError
from mergeflow.io import atomic_path, read_json
from mergeflow.merge import METHODS
from mergeflow.text.tasks import scored_here, task_metric

L = paths.TEXT  # the suite's folders: set from the configuration by build_text_report
# LOT Merging's Table 15 (RoBERTa, 8 GLUE tasks, average): the order the paper reports
PAPER_ORDER = [("lot", 63.13), ("cat", 62.56), ("pcb", 59.59), ("task_arithmetic", 58.34), ("ties", 47.42)]
# LOT Merging's Table 15 (RoBERTa-base on GLUE's validation splits; CoLA Matthews, STS-B the Pearson/Spearman mean),
# per task; shown beside ours when a run's tasks are GLUE's (their checkpoints are not published with the paper)
_LOT_TABLE_15 = {
    "task_arithmetic": {"cola": 6.68, "mnli": 66.23, "mrpc": 78.46, "qnli": 78.62, "qqp": 72.69, "rte": 53.43,
                        "sst2": 83.49, "stsb": 27.10},
    "ties": {"cola": 9.46, "mnli": 59.34, "mrpc": 74.71, "qnli": 65.93, "qqp": 41.29, "rte": 47.29, "sst2": 72.13,
             "stsb": 9.21},
    "pcb": {"cola": 11.40, "mnli": 50.85, "mrpc": 77.63, "qnli": 78.22, "qqp": 55.78, "rte": 60.29, "sst2": 75.57,
            "stsb": 67.01},
    "cat": {"cola": 33.20, "mnli": 72.33, "mrpc": 68.22, "qnli": 82.92, "qqp": 76.05, "rte": 62.82, "sst2": 89.33,
            "stsb": 15.57},
    "lot": {"cola": 17.13, "mnli": 73.04, "mrpc": 78.27, "qnli": 77.22, "qqp": 78.81, "rte": 65.35, "sst2": 89.74,
            "stsb": 25.50},
}
# FusionBench's GPT-2 GLUE table (docs/modelpool/gpt2_classification.md: its published experts tanganke/gpt2_<task>,
# GLUE's validation splits, every task by accuracy); zeroshot is the 0.0 row of its task-arithmetic scale sweep
_FUSIONBENCH_GPT2 = {
    "individual": {"cola": 76.8, "mnli": 82.1, "mrpc": 80.4, "qnli": 88.3, "qqp": 89.6, "rte": 65.3, "sst2": 91.2},
    "zeroshot": {"cola": 30.9, "mnli": 33.0, "mrpc": 31.4, "qnli": 49.2, "qqp": 63.2, "rte": 52.7, "sst2": 50.9},
    "weight_averaging": {"cola": 55.0, "mnli": 55.1, "mrpc": 51.0, "qnli": 57.6, "qqp": 76.7, "rte": 44.8,
                         "sst2": 52.5},
    "fisher": {"cola": 54.8, "mnli": 58.0, "mrpc": 39.5, "qnli": 63.3, "qqp": 81.5, "rte": 49.1, "sst2": 64.7},
    "regmean": {"cola": 61.7, "mnli": 70.4, "mrpc": 65.4, "qnli": 69.7, "qqp": 78.8, "rte": 56.0, "sst2": 79.7},
    "task_arithmetic": {"cola": 68.7, "mnli": 68.6, "mrpc": 69.6, "qnli": 70.5, "qqp": 81.8, "rte": 47.3,
                        "sst2": 83.6},
    "ties": {"cola": 68.4, "mnli": 71.4, "mrpc": 68.4, "qnli": 69.6, "qqp": 82.4, "rte": 47.7, "sst2": 81.8},
}
# the published table shown beside a run: the first whose base (model.arch, a Hub id) is the run's; LOT's for any
# other base on GLUE tasks
PAPER_TABLES = (
    {"title": "FusionBench's GPT-2 GLUE table", "archs": ("gpt2", "openai-community/gpt2"), "rows": _FUSIONBENCH_GPT2,
     "note": "Their published experts (tanganke/gpt2_&lt;task&gt;) are the ones model.import reads, so the rows "
             "compare the same checkpoints: a gap is the merge, the scale choice (theirs fixed, ours on "
             "validation) or the sequence length."},
    {"title": "LOT Merging's Table 15 (RoBERTa-base, GLUE)", "archs": None, "rows": _LOT_TABLE_15,
     "note": "Their experts are not published with the paper, so the rows compare protocols, not checkpoints: a "
             "gap can be the experts as much as the method."},
)


def paper_table(cfg: Config) -> dict:
    """The published table a run is shown beside (:data:`PAPER_TABLES`)."""
    arch = cfg.raw["model"]["arch"]
    return next(t for t in PAPER_TABLES if t["archs"] is None or arch in t["archs"])


# the papers' regime (issue 29): what makes merging on this suite comparable to theirs
REGIME = {"experts_min": 85.0, "ratio_max": 0.05, "ta_gain_min": 10.0, "gap_min": 5.0}
# the generation suite's regime (issue 30): experts that answer, and task arithmetic neither lost nor perfect,
# so that methods have room to differ
LM_REGIME = {"experts_min": 80.0, "ta_normalized": (50.0, 95.0)}
# what each method does with a tied token table (algorithms.md §8, §9); any other method: its rule for any tensor
TIED_TABLE_RULES = {
    "lot": "both roles: per row, the closed form over lookup counts and the output projection's input Gram",
    "cat": "lookup role only: the task vectors' rows summed untrimmed",
    "regmean": "the experts' tables averaged (a lookup has no input Gram; the projection's Gram is not used)",
}
OTHER_TABLE_RULE = "the method's rule for any tensor, applied to the table's task vectors"


# LOT Merging's Table 16: Qwen3-0.6B-Base with its Embedding and Reranker experts, scored as an embedding model on
# MTEB's ArguAna (nDCG@10) and ArXivHierarchicalClusteringS2S (V-measure); shown beside an unscored run on that base
_LOT_TABLE_16 = {"title": "LOT Merging's Table 16 (Qwen3-0.6B, Embedding + Reranker experts)",
                 "archs": ("Qwen/Qwen3-0.6B-Base",), "columns": ("ArguAna", "ArXivHierarchicalClusteringS2S"),
                 "rows": {"individual (the Embedding expert)": (53.62, 0.6377), "task_arithmetic": (30.86, 0.6318),
                          "lot": (47.36, 0.6374)}}
EXTERNAL_TABLES = (_LOT_TABLE_16,)


def _metrics(name: str) -> dict | None:
    file = L.metrics(name)
    return read_json(file) if file.is_file() else None


def rows(cfg: Config) -> list[dict]:
    """One row per model: its scores per task, mean, mean normalised score and scale."""
    out = []
    for model in cfg.models():
        m = _metrics(model)
        if m is None:
            raise MergeflowError(f"{L.metrics(model)}: not found; run the stage that writes it")
        out.append({"model": model, **{t: m["score"][t] for t in cfg.tasks}, "average": m["average"],
                    "normalized": 100 * m["normalized"] if "normalized" in m else 100.0,
                    "scale": m.get("scale")})
    return out


def regime(cfg: Config, table: list[dict]) -> list[dict]:
    """The regime's checks with their measured values (the text suite's four, the generation suite's two)."""
    by = {r["model"]: r for r in table}
    if cfg.suite == "lm":
        low, high = LM_REGIME["ta_normalized"]
        checks = [{"check": f"experts' mean exact match >= {LM_REGIME['experts_min']:g}",
                   "value": by["individual"]["average"],
                   "held": by["individual"]["average"] >= LM_REGIME["experts_min"]}]
        if "task_arithmetic" in by:
            ta = by["task_arithmetic"]["normalized"]
            checks.append({"check": f"task arithmetic's normalised score between {low:g} and {high:g} %",
                           "value": ta, "held": low <= ta <= high})
        return checks
    ratios = read_json(L.evaluation("individual")).get("task_vector_ratio", {})
    # one model for every task: not the references, not a task-aware result (EMR: a part per task)
    single = [r for r in table if r["model"] not in ("zeroshot", "individual")
              and not METHODS[cfg.run(r["model"]).method].task_aware]
    best = max(single, key=lambda r: r["normalized"], default=None)
    checks = [{"check": f"experts' mean task metric >= {REGIME['experts_min']:g}",
               "value": by["individual"]["average"], "held": by["individual"]["average"] >= REGIME["experts_min"]},
              {"check": f"every ||T_k|| / ||theta_pre|| <= {100 * REGIME['ratio_max']:g} %",
               "value": 100 * max(ratios.values(), default=0.0),
               "held": max(ratios.values(), default=0.0) <= REGIME["ratio_max"]}]
    if "task_arithmetic" in by:
        gain = by["task_arithmetic"]["normalized"] - by["zeroshot"]["normalized"]
        checks.append({"check": f"task arithmetic >= pre-trained body + {REGIME['ta_gain_min']:g} normalised points",
                       "value": gain, "held": gain >= REGIME["ta_gain_min"]})
    if best is not None:
        gap = 100.0 - best["normalized"]
        checks.append({"check": f"best single merge ({best['model']}) >= {REGIME['gap_min']:g} points below the "
                                "experts",
                       "value": gap, "held": gap >= REGIME["gap_min"]})
    return checks


def claims(cfg: Config, table: list[dict]) -> list[dict]:
    """Each neighbouring pair of LOT's Table 15 order, where both methods ran (RoBERTa on GLUE: the text suite
    only)."""
    if cfg.suite != "text":
        return []
    by = {r["model"]: r for r in table}
    present = [(m, paper) for m, paper in PAPER_ORDER if m in by]
    out = []
    for (a, pa), (b, pb) in zip(present, present[1:], strict=False):
        diff = by[a]["average"] - by[b]["average"]
        out.append({"claim": f"{a} > {b} (paper: {pa:.2f} vs {pb:.2f})", "ours": f"{by[a]['average']:.1f} vs "
                    f"{by[b]['average']:.1f}", "held": diff > 0})
    return out


def left_out(cfg: Config) -> list[dict]:
    """Tasks a run's objective could not use, and why (the merge reports' ``not_applicable``)."""
    out = []
    for run in cfg.merge_runs():
        file = L.merge_report(run.name)
        skipped = read_json(file).get("diagnostics", {}).get("not_applicable", {}) if file.is_file() else {}
        out += [{"run": run.name, "task": task, "why": why} for task, why in sorted(skipped.items())]
    return out


def _csv(cfg: Config, table: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["model", *cfg.tasks, "average", "normalized", "scale"], lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def paper_rows(cfg: Config, table: list[dict]) -> list[dict]:
    """The published table's row and ours for each of its models that ran (:func:`paper_table`), on the GLUE
    tasks both have (none when the run's tasks are not GLUE's)."""
    if cfg.suite != "text":
        return []
    ours = {r["model"]: r for r in table}
    published = paper_table(cfg)["rows"]
    shared = [t for t in cfg.tasks if all(t in row for row in published.values())]
    if not shared:
        return []
    out = []
    for method, theirs in published.items():
        if method in ours:
            out.append({"model": method, "tasks": shared, "paper": [theirs[t] for t in shared],
                        "ours": [ours[method][t] for t in shared],
                        "paper_mean": sum(theirs[t] for t in shared) / len(shared),
                        "ours_mean": sum(ours[method][t] for t in shared) / len(shared)})
    return out


def _paper_html(cfg: Config, rows: list[dict]) -> str:
    if not rows:
        return ""
    e = html.escape
    published = paper_table(cfg)
    head = "".join(f"<th>{e(t)}</th>" for t in rows[0]["tasks"])
    body = "".join(f"<tr><td>{e(r['model'])} ({who})</td>" + "".join(f"<td>{v:.1f}</td>" for v in values)
                   + f"<td>{mean:.1f}</td></tr>"
                   for r in rows for who, values, mean in (("paper", r["paper"], r["paper_mean"]),
                                                           ("ours", r["ours"], r["ours_mean"])))
    return (f"<h2>Beside {e(published['title'])}</h2><p>{published['note']}</p>"
            f"<table><tr><th>method</th>{head}<th>mean</th></tr>{body}</table>")


def _html(cfg: Config, table: list[dict], checks: list[dict], tested: list[dict], skipped: list[dict]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(t)}<br><small>{e(task_metric(cfg.raw, t))}</small></th>" for t in cfg.tasks)
    body = "".join("<tr><td>" + e(r["model"]) + "</td>" + "".join(f"<td>{r[t]:.1f}</td>" for t in cfg.tasks)
                   + f"<td>{r['average']:.1f}</td><td>{r['normalized']:.1f}</td>"
                   + f"<td>{'' if r['scale'] is None else e(str(r['scale']))}</td></tr>" for r in table)
    checks_html = "".join(f"<li>{e(c['check'])}: {c['value']:.1f} — {'held' if c['held'] else 'not held'}</li>"
                          for c in checks)
    claims_html = "".join(f"<li>{e(c['claim'])}: ours {e(c['ours'])} — {'held' if c['held'] else 'failed'}</li>"
                          for c in tested) or "<li>no pair of the paper's methods ran</li>"
    if cfg.suite == "lm":
        return _lm_html(cfg, head, body, checks_html)
    skipped_html = "".join(f"<li>{e(x['run'])}, task {e(x['task'])}: {e(x['why'])}</li>" for x in skipped)
    skipped_html = f"<h2>Not applicable</h2><ul>{skipped_html}</ul>" if skipped else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mergeflow — {e(cfg.raw['name'])} (text)</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}</style></head><body>"
            f"<h1>Text suite: {e(cfg.raw['name'])}</h1><p>Base {e(str(cfg.raw['model']['arch']))} "
            f"({e(str(cfg.raw['model']['pretrained']))}); each task scored by the metric under its name on its "
            "test split with its own expert's head; <i>zeroshot</i> is the pre-trained body with the experts' heads; "
            "normalised = mean over tasks of merged / expert.</p>"
            f"<table><tr><th>model</th>{head}<th>mean</th><th>normalised</th><th>scale</th></tr>{body}</table>"
            f"<h2>The papers' regime</h2><ul>{checks_html}</ul>"
            f"<h2>LOT Table 15's order (RoBERTa on GLUE)</h2><ul>{claims_html}</ul>"
            f"{_paper_html(cfg, paper_rows(cfg, table))}{skipped_html}</body></html>")


def _lm_html(cfg: Config, head: str, body: str, checks_html: str) -> str:
    e = html.escape
    methods = [r.method for r in cfg.merge_runs() if r.method in cfg.raw["merge"]["methods"]]
    rules = "".join(f"<li>{e(m)}: {e(TIED_TABLE_RULES.get(m, OTHER_TABLE_RULE))}</li>" for m in dict.fromkeys(methods))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mergeflow — {e(cfg.raw['name'])} (lm)</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}</style></head><body>"
            f"<h1>Generation suite: {e(cfg.raw['name'])}</h1><p>Base {e(str(cfg.raw['model']['arch']))} "
            f"({e(str(cfg.raw['model']['pretrained']))}); each task's test prompts answered by greedy decoding and "
            "scored by exact match; the whole language model is merged (no per-task head); <i>zeroshot</i> is the "
            "pre-trained model; normalised = mean over tasks of merged / expert.</p>"
            f"<table><tr><th>model</th>{head}<th>mean</th><th>normalised</th><th>scale</th></tr>{body}</table>"
            f"<h2>The suite's regime</h2><ul>{checks_html}</ul>"
            f"<h2>The tied token table</h2><p>Input and output embeddings are one table; each method's rule for it:"
            f"</p><ul>{rules}</ul></body></html>")


def merged_rows(cfg: Config) -> list[dict]:
    """One row per merge run of a run scored outside mergeflow: what was merged and how (its merge record)."""
    out = []
    for run in cfg.merge_runs():
        file = L.merge_report(run.name)
        if not file.is_file():
            raise MergeflowError(f"{file}: not found; run `mergeflow merge --method {run.name}`")
        record = read_json(file)
        out.append({"run": run.name, "method": run.method, "scale": record["scale"]["value"],
                    "wall_s": record["wall_s"], "model": L.merged(run.name).as_posix(),
                    "model_sha256": record["model_sha256"]})
    return out


def _external_html(cfg: Config, merged: list[dict]) -> str:
    """The page of a run whose tasks are calibration tasks: the merged models, each method's rule for the token
    table, how to score them outside mergeflow, and the published numbers to compare with."""
    e = html.escape
    body = "".join(f"<tr><td>{e(r['run'])}</td><td>{e(str(r['scale']))}</td><td>{r['wall_s']:.1f}</td>"
                   f"<td>{e(r['model'])}</td><td><code>{e(r['model_sha256'][:16])}</code></td></tr>" for r in merged)
    methods = dict.fromkeys(r["method"] for r in merged)
    rules = "".join(f"<li>{e(m)}: {e(TIED_TABLE_RULES.get(m, OTHER_TABLE_RULE))}</li>" for m in methods)
    example = merged[0]["run"] if merged else "lot"
    arch = cfg.raw["model"]["arch"]
    published = next((t for t in EXTERNAL_TABLES if arch in t["archs"]), None)
    paper = ""
    if published is not None:
        cols = "".join(f"<th>{e(c)}</th>" for c in published["columns"])
        rows_html = "".join(f"<tr><td>{e(m)}</td>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"
                            for m, values in published["rows"].items())
        paper = (f"<h2>{e(published['title'])}</h2><p>What the paper reports for this setting; score the merged "
                 f"models above the same way to compare.</p><table><tr><th>model</th>{cols}</tr>{rows_html}</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mergeflow — {e(cfg.raw['name'])} "
            f"({e(cfg.suite)})</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            f"</style></head><body><h1>Merged language models: {e(cfg.raw['name'])}</h1>"
            f"<p>Base {e(str(arch))} ({e(str(cfg.raw['model']['pretrained']))}); experts imported from "
            f"model.import; the data-aware methods' statistics from each task's calibration texts "
            f"({', '.join(e(t) for t in cfg.tasks)}). These tasks are scored outside mergeflow: no merged model "
            "here has a score, and every scale is the configured one (there is no validation split to choose it "
            "on).</p>"
            "<table><tr><th>run</th><th>scale</th><th>merge s</th><th>merged weights</th><th>sha256</th></tr>"
            f"{body}</table>"
            "<h2>Scoring the merged models</h2><p>Each file holds the whole causal language model under its "
            "Hugging Face parameter names (a tied table once). Make it a Hugging Face folder and give that to your "
            "evaluation (for MTEB, its Qwen3-Embedding loader with the folder as the model path):</p>"
            f"<pre>cp -r {e(L.base.as_posix())} merged-{e(example)} &amp;&amp; cp {e(L.merged(example).as_posix())} "
            f"merged-{e(example)}/model.safetensors</pre>"
            f"<h2>The tied token table</h2><ul>{rules}</ul>{paper}</body></html>")


def _merged_csv(merged: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["run", "method", "scale", "wall_s", "model", "model_sha256"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(merged)
    return buf.getvalue()


def build_text_report(cfg: Config) -> Path:
    """``reports/<suite>/results.csv`` and ``reports/<suite>/report.html`` (text or lm; for calibration tasks,
    scored outside mergeflow, the merged models and how to score them)."""
    global L
    L = paths.TEXT_LAYOUTS[cfg.suite]
    if not scored_here(cfg.tasks):
        merged = merged_rows(cfg)
        L.reports.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.csv", _merged_csv(merged)), ("report.html", _external_html(cfg, merged))):
            with atomic_path(L.reports / name) as tmp:
                Path(tmp).write_text(text)
        return L.reports / "report.html"
    table = rows(cfg)
    checks, tested = regime(cfg, table), claims(cfg, table)
    L.reports.mkdir(parents=True, exist_ok=True)
    page = _html(cfg, table, checks, tested, left_out(cfg))
    for name, text in (("results.csv", _csv(cfg, table)), ("report.html", page)):
        with atomic_path(L.reports / name) as tmp:
            Path(tmp).write_text(text)
    return L.reports / "report.html"
