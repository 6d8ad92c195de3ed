"""The text suite in the DAG (issue 29): its configuration checks, both engines' text DAGs, and a tiny run of
each engine giving the same bytes."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dag_tools import BIN, dvc_stages, engine_env, snakemake_jobs
from mergeflow import config, dag
from mergeflow.errors import MergeflowError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "e2e" / "text-tiny.yaml"
ALL_TINY = ROOT / "tests" / "e2e" / "all-tiny.yaml"
LM_TINY = ROOT / "tests" / "e2e" / "lm-tiny.yaml"


def _raw():
    return yaml.safe_load(TINY.read_text())


def _load(tmp_path, raw):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config.load(p)


def _workspace(path: Path, params: Path = TINY, suites: bool = False) -> Path:
    """A workspace running ``params``; with ``suites``, the vision tiny run as params.yaml, the text one beside
    it and the suites file naming both."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "models" / "community").mkdir(parents=True)
    for name in ("Snakefile", "workflow", "src"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, path / name)
    if suites:
        shutil.copy(ROOT / "tests" / "e2e" / "tiny.yaml", path / "params.yaml")
        for file in (TINY, LM_TINY, ALL_TINY):
            shutil.copy(file, path / file.name)
        _run([str(BIN / "mergeflow"), "--params", ALL_TINY.name, "dag"], path)
    else:
        shutil.copy(params, path / "params.yaml")
        _run([str(BIN / "mergeflow"), "dag"], path)
    return path


def _run(cmd, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=engine_env(cwd), capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


# --- configuration -----------------------------------------------------------------------------------------------
def test_the_tiny_text_configuration_loads_as_a_text_suite(tmp_path):
    cfg = _load(tmp_path, _raw())
    assert cfg.suite == "text" and cfg.tasks == ["sentiment", "paraphrase", "similarity"]
    assert config.load(ROOT / "params.yaml").suite == "vision"


@pytest.mark.parametrize("edit,words", [
    (lambda r: r["data"].__setitem__("tasks", ["sentiment", "mnist"]), "unknown text task 'mnist'"),
    (lambda r: r["data"].pop("max_length"), "data.max_length is required for the text suite"),
    (lambda r: r["data"].__setitem__("max_length", 500), "max_length = 500: mf-roberta-micro has positions for 64"),
    (lambda r: r["model"].__setitem__("arch", "mf-vit-small"), "model.arch = 'mf-vit-small': unknown text arch"),
    (lambda r: r["model"].__setitem__("arch", "all-minilm-l6-v2"), "is a packaged model: set model.pretrained"),
    (lambda r: r["model"].__setitem__("pretrained", "packaged"), "'mf-roberta-micro' is not a packaged model"),
    (lambda r: r["merge"]["methods"].append("surgery"),
     "'surgery' is not available for the text suite: it trains adapters on the encoder's output"),
    (lambda r: r["merge"]["tatr"].__setitem__("examples", 999),
     "tatr needs 999 exemplars per task but exemplars.pool = 16"),
    (lambda r: r.__setitem__("suite", "audio"), "suite = 'audio': must be one of vision, text"),
    (lambda r: r["features"].__setitem__("weighting", "words"), "features.weighting = 'words'"),
    (lambda r: r["data"].__setitem__("tasks", ["sst2"]), "data.download is false but data.local_dir is not set"),
])
def test_a_bad_text_configuration_is_one_line_naming_it(tmp_path, edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(MergeflowError, match=None) as exc:
        _load(tmp_path, raw)
    assert words in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_a_vision_only_stage_on_a_text_configuration_is_one_line(tmp_path):
    shutil.copy(TINY, tmp_path / "params.yaml")
    out = subprocess.run([str(BIN / "mergeflow"), "heads"], cwd=tmp_path, env=engine_env(), capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "mergeflow heads: error: `mergeflow heads` is a stage of the vision suite only; params.yaml is a text "
        "configuration"], out.stderr


# --- the DAG -----------------------------------------------------------------------------------------------------
def test_text_stages_say_their_suite_and_depend_on_the_text_code_only():
    cfg = config.load(TINY)
    stages = dag.text_stages(cfg, ROOT)
    assert all(name.startswith("text-") for name in stages)
    assert {"text-base", "text-prepare", "text-finetune", "text-reference", "text-merge-lot",
            "text-report"} <= set(stages)
    lot = stages["text-merge-lot"]["deps"]
    assert "src/mergeflow/stages/text.py" in lot and "src/mergeflow/merge/lot.py" in lot
    assert "src/mergeflow/stages/merge.py" not in lot and "src/mergeflow/merge/cat.py" not in lot
    assert "src/mergeflow/families/hf_encoder.py" in stages["text-features"]["deps"]
    vision_stages = {f"src/mergeflow/stages/{m}.py" for m in ("data", "models", "features", "merge", "evaluate")}
    assert not any(d in vision_stages for s in stages.values() for d in s["deps"])
    lm = dag.text_stages(config.load(LM_TINY), ROOT)
    assert all(name.startswith("lm-") for name in lm) and "lm-merge-lot" in lm
    assert "models/lm/base" in lm["lm-merge-lot"]["deps"]
    assert "src/mergeflow/text/causal.py" in lm["lm-finetune"]["deps"]
    # no vision stage depends on the text code (mergeflow.config checks a text configuration by name)
    for name, stage in dag.dvc_stages(config.load(ROOT / "params.yaml"), ROOT).items():
        assert not any(d.startswith("src/mergeflow/text/") or d.endswith("stages/text.py") for d in stage["deps"]), name


@pytest.mark.parametrize("suites", [False, True, "import", "lm"], ids=["text", "vision+text+lm", "text+import", "lm"])
def test_both_engines_declare_the_same_text_dag(tmp_path, suites):
    params = TINY
    if suites == "lm":
        params, suites = LM_TINY, False
    if suites == "import":  # published experts: each task's folder is an input of text-finetune
        raw = _raw()
        raw["model"]["import"] = {"format": "hf", "root": "published", "tasks": {"sentiment": "sst2"}}
        params = tmp_path / "import.yaml"
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        for name in ("sst2", "paraphrase", "similarity"):
            (tmp_path / "ws" / "published" / name).mkdir(parents=True)
            (tmp_path / "ws" / "published" / name / "config.json").write_text("{}")
        suites = False
    ws = _workspace(tmp_path / "ws", params, suites=suites)
    if params not in (TINY, LM_TINY):
        finetune = dag.text_stages(config.load(ws / "params.yaml"), ws)["text-finetune"]
        assert "published/sst2" in finetune["deps"] and "model.import" in str(finetune["params"])
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], ws)
    dvc = dvc_stages(ws)
    smk = snakemake_jobs(ws, "--forceall", *(["--configfile", ALL_TINY.name] if suites else []))
    if suites:
        assert "mergeflow --params text-tiny.yaml merge --method lot --evaluate" in dvc
        assert "mergeflow --params lm-tiny.yaml merge --method lot --evaluate" in dvc
        assert "mergeflow merge --method cat --evaluate" in dvc  # the vision suite's, as in its own DAG
        assert "mergeflow --params all-tiny.yaml report" in dvc
    assert set(dvc) == set(smk), (sorted(set(dvc) - set(smk)), sorted(set(smk) - set(dvc)))
    def covered(path, by):  # DVC may declare a folder where Snakemake lists the files in it
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)

    for cmd in dvc:
        assert dvc[cmd][1] == smk[cmd][1], cmd
        dvc_in, smk_in = dvc[cmd][0], smk[cmd][0]
        assert all(covered(p, dvc_in) for p in smk_in), (cmd, smk_in - dvc_in)
        assert all(any(covered(s, {p}) or covered(p, {s}) for s in smk_in) for p in dvc_in), (cmd, dvc_in - smk_in)

# a run of each engine (both suites, beside the vision run): tests/test_e2e.py


# --- the cross-suite report -------------------------------------------------------------------------------------
def test_the_suites_report_has_the_method_table_and_a_section_per_suite(tmp_path, monkeypatch):
    """Metrics written by hand for both tiny suites: the table's normalised scores and ranks, Spearman over the
    methods both ran, and each suite's section with its experts, pre-trained model and methods."""
    import json

    from mergeflow.report.suites import build_suites_report, metrics_file

    shutil.copy(ROOT / "tests" / "e2e" / "tiny.yaml", tmp_path / "params.yaml")
    shutil.copy(TINY, tmp_path / TINY.name)
    (tmp_path / "two.yaml").write_text(f"name: two\nsuites: [params.yaml, {TINY.name}]\n")
    monkeypatch.chdir(tmp_path)
    suites = config.load("two.yaml")
    vision, text = suites.of("vision"), suites.of("text")
    both = sorted(set(vision.raw["merge"]["methods"]) & set(text.raw["merge"]["methods"]))
    for cfg, unit in ((vision, 0.01), (text, 1.0)):  # image accuracies are fractions, GLUE metrics percent
        methods = cfg.raw["merge"]["methods"]
        for i, m in enumerate(methods):
            # the text suite ranks the shared methods in the opposite order
            rank = both.index(m) if m in both and cfg is vision else (len(both) - both.index(m) if m in both else i)
            numbers = {"average": unit * (40 + rank), "normalized": 0.5 + rank / 100, "scale": 0.3}
            metrics_file(cfg.suite, m).parent.mkdir(parents=True, exist_ok=True)
            metrics_file(cfg.suite, m).write_text(json.dumps(numbers))
        metrics_file(cfg.suite, "individual").write_text(json.dumps({"average": unit * 90}))
        metrics_file(cfg.suite, "zeroshot").write_text(json.dumps({"average": unit * 30, "normalized": 0.3}))
    page = build_suites_report(suites).read_text()
    lines = (tmp_path / "reports" / "suites.csv").read_text().splitlines()
    table = {line.split(",")[0]: line.split(",")[1:] for line in lines}
    assert table["method"] == ["vision", "text", "vision_rank", "text_rank"]
    assert float(table[both[-1]][0]) == pytest.approx(100 * (0.5 + (len(both) - 1) / 100))
    assert f"vision vs text: Spearman -1.00 over {len(both)} methods" in page
    assert "<h2>vision suite (params.yaml, tiny)</h2>" in page
    assert "<h2>text suite (text-tiny.yaml, text-tiny)</h2>" in page
    assert page.count("experts 90.0, pre-trained 30.0 (mean task score, %)") == 2
    assert f"<tr><td>{both[0]}</td><td>40.0</td><td>50.0</td><td>0.3</td></tr>" in page  # a vision row
