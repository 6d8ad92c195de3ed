"""Both engines end to end on the tiny configuration, the same metrics from each, and selective reruns.

Slow (a few minutes): every stage is a fresh `mergeflow` process, as in a real run.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from dag_tools import BIN, as_in_a_terminal, engine_env, snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "e2e" / "tiny.yaml"
# src: the code the stages run and depend on (the workspace's own copy, see dag_tools.engine_env), with the
# pretrained weights, the base's input; models/community: the import stage's. dvc.yaml is generated.
PIPELINE = ["Snakefile", "workflow", "src", "models/community"]


def _workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE:
        src = ROOT / name
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, path / name)
    shutil.copy(TINY, path / "params.yaml")
    _run([str(BIN / "mergeflow"), "dag"], path)
    return path


def _run(cmd: list[str], cwd: Path, *extra_paths: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=engine_env(cwd, *extra_paths), capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def _dvc_repro(ws: Path, *extra_paths: Path) -> set[str]:
    """Run ``dvc repro``; the names of the stages it ran."""
    return set(re.findall(r"Running stage '([^']+)'", _run([str(BIN / "dvc"), "repro"], ws, *extra_paths)))


def _edit(ws: Path, fn) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    fn(params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _metrics(ws: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text())["accuracy"]
            for p in sorted((ws / "reports" / "metrics").glob("*.json"))}


@pytest.fixture(scope="module")
def dvc_ws(tmp_path_factory):
    ws = _workspace(tmp_path_factory.mktemp("dvc"))
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], ws)
    ran = _dvc_repro(ws)
    assert {"base", "heads", "reference", "report", "merge-cat", "merge-lot"} <= ran
    return ws


@pytest.fixture(scope="module")
def smk_ws(tmp_path_factory):
    ws = _workspace(tmp_path_factory.mktemp("smk"))
    _run([str(BIN / "snakemake"), "--cores", "2"], ws)
    return ws


def test_dvc_runs_every_method_and_writes_the_report(dvc_ws):
    methods = yaml.safe_load(TINY.read_text())["merge"]["methods"]
    metrics = _metrics(dvc_ws)
    assert {"zeroshot", "individual", *methods, "cat--lambda-1.0", "lot--exemplars-4"} <= set(metrics)
    html = (dvc_ws / "reports" / "report.html").read_text()
    assert 'src="data:image/png;base64,' in html and "git commit" in html.lower()
    results = (dvc_ws / "reports" / "results.csv").read_text().splitlines()
    assert results[0].startswith("model,") and len(results) >= 2 + len(methods)
    assert (dvc_ws / "reports" / "figures" / "heatmap.png").is_file()


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), tree


def test_dvc_metrics_are_numbers_only(dvc_ws):
    shown = json.loads(_run([str(BIN / "dvc"), "metrics", "show", "--json"], dvc_ws))
    files = shown[""]["data"]  # {"": {"data": {<file>: {"data": {...}}}}}: the workspace's metrics files
    assert "reports/metrics/cat.json" in files, sorted(files)
    assert not any("reports/merge/" in f or "evaluation" in f or "results.csv" in f for f in files), sorted(files)
    leaves = {f"{f}:{k}": v for f, entry in files.items() for k, v in _leaves(entry["data"])}
    bad = {k: v for k, v in leaves.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    assert not bad, f"non-numeric metrics: {bad}"
    cat = json.loads((dvc_ws / "reports" / "metrics" / "cat.json").read_text())
    assert set(cat) == {"average", "normalized", "drop_std", "scale", "merge_wall_s", "accuracy"}


def _stage_processes(root: "psutil.Process", command: str) -> list:
    """The live processes under ``root`` that run ``mergeflow <command>`` (the stage and its workers)."""
    out = []
    for proc in root.children(recursive=True):
        try:
            if f"mergeflow {command}" in " ".join(proc.cmdline()):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _children(stages: list) -> int:
    count = 0
    for p in stages:
        try:
            count += len(p.children(recursive=True))
        except psutil.Error:
            continue
    return count


def _interrupted_repro(ws: Path, command: str, how: str, after_s: float, workers: int = 0,
                       target: str | None = None) -> list[int]:
    """Start ``dvc repro [target]``; ``after_s`` seconds into ``mergeflow <command>`` (counted from when its stage
    process has started ``workers`` processes of its own), kill that stage's process with SIGKILL (``kill``)
    or press Ctrl-C (``ctrl-c``: SIGINT to the terminal's process group). Returns the ids of every process
    the stage had started (to check that none outlives it)."""
    import time

    proc = subprocess.Popen([str(BIN / "dvc"), "repro", *([target] if target else [])], cwd=ws, env=engine_env(ws),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=as_in_a_terminal)
    dvc = psutil.Process(proc.pid)
    deadline = time.monotonic() + 600
    # a marker, not a fixed delay from the start: a stage's workers import torch before any work, so a short
    # delay after they appear lands inside the stage however fast the machine is
    found = None  # when the stage was first seen (a machine with one core runs its tasks in-process)
    while True:
        stages = _stage_processes(dvc, command)
        if stages:
            found = found or time.monotonic()
            if _children(stages) >= workers or time.monotonic() - found > 5.0:
                break
        assert proc.poll() is None and time.monotonic() < deadline, f"mergeflow {command} never started"
        time.sleep(0.05)
    time.sleep(after_s)
    started = {p.pid for p in _stage_processes(dvc, command)} | {c.pid for p in _stage_processes(dvc, command)
                                                                   for c in p.children(recursive=True)}
    if how == "kill":
        stage = min(_stage_processes(dvc, command), key=lambda p: p.create_time())  # the stage, not a worker
        stage.kill()
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-3000:]
    if how == "ctrl-c":  # the stage's own words: one line, no traceback
        assert f"mergeflow {command.split()[0]}: interrupted" in out and "Traceback" not in out, out[-3000:]
    return sorted(started)


def test_kill_and_ctrl_c_at_three_points_then_a_rerun_give_the_uninterrupted_bytes(dvc_ws, tmp_path):
    """kill -9 and Ctrl-C at three points: the fine-tuning stage (with its worker processes), the
    statistics, a merge; then `dvc repro` of that merge: every model, statistic and accuracy it made
    equals the uninterrupted run's and no process of the interrupted stages is left.

    Every repro here stops at CAT's merge (``dvc repro merge-cat``: the stages it depends on): the other
    merges, the sweeps and the report are not what an interruption can break, and ran here they took most
    of this test's time."""
    import time

    ws = _workspace(tmp_path / "ws")
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], ws)
    started = []
    # Each stage is found running, then stopped after_s later: short enough that the stage (a second or
    # two in the tiny run, most of it importing torch) has not finished, or DVC would go on past it.
    # (the fine-tuning stage is stopped once its two task workers run; `--evaluate` keeps CAT's sweep runs,
    # `cat--…`, from being taken for CAT's own merge)
    for command, how, after_s, workers in (("finetune", "kill", 0.5, 2), ("finetune", "ctrl-c", 0.3, 2),
                                           ("features", "ctrl-c", 0.3, 0), ("features", "kill", 0.3, 0),
                                           ("merge --method cat --evaluate", "kill", 0.5, 0),
                                           ("merge --method cat --evaluate", "ctrl-c", 0.3, 0)):
        started += _interrupted_repro(ws, command, how, after_s, workers, target="merge-cat")
    assert len(started) >= 8  # the fine-tuning workers (and multiprocessing's resource tracker) were there
    deadline = time.monotonic() + 15
    while [p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, [psutil.Process(p).cmdline() for p in started if psutil.pid_exists(p)]
        time.sleep(0.5)
    ran = set(re.findall(r"Running stage '([^']+)'", _run([str(BIN / "dvc"), "repro", "merge-cat"], ws)))
    assert "merge-cat" in ran, ran  # the stages interrupted earlier were completed by the later repros
    assert "up to date" in _run([str(BIN / "dvc"), "status", "merge-cat"], ws).lower()
    for sub in ("data/prepared", "data/exemplars", "data/features", "models"):
        # weights, statistics and exemplar lists (the logs beside them record wall times)
        files = sorted(p.relative_to(ws) for p in (ws / sub).rglob("*")
                       if p.suffix == ".safetensors" or sub == "data/exemplars")
        assert files, sub
        for f in files:
            assert (ws / f).read_bytes() == (dvc_ws / f).read_bytes(), f
    assert any("cat" in f.name for f in (ws / "models" / "merged").rglob("*.safetensors"))
    numbers = ("accuracy", "average", "normalized", "drop_std", "scale")
    made = sorted((ws / "reports" / "metrics").glob("*.json"))
    assert "cat.json" in {f.name for f in made}, made
    for f in made:
        ours, theirs = json.loads(f.read_text()), json.loads((dvc_ws / f.relative_to(ws)).read_text())
        assert {k: ours.get(k) for k in numbers} == {k: theirs.get(k) for k in numbers}, f.name


def test_the_report_fits_the_page_in_a_real_browser(dvc_ws, tmp_path):
    from mergeflow.report.browser import check_page, find_chromium

    if find_chromium() is None:
        pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    result = check_page(dvc_ws / "reports" / "report.html", 1280, tmp_path / "report.png")
    assert result["ok"], result
    assert result["images"] >= 5 and (tmp_path / "report.png").stat().st_size > 10_000


def test_the_slurm_profile_runs_on_a_real_single_node_cluster(smk_ws, tmp_path):
    """Every job through sbatch on a cluster this test starts itself; the metrics equal a local run's.

    The targets need a job of every rule but the report (whose merges would add a minute each as jobs)."""
    from slurm_cluster import completed_jobs, local_cluster, unavailable

    if why := unavailable():
        pytest.skip(why)
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    ws = _workspace(tmp_path / "ws")
    targets = ["reports/metrics/cat.json", "reports/metrics/lot.json"]
    with local_cluster(tmp_path / "slurm") as cluster:
        # the targets first: --default-resources takes every word after it
        out = subprocess.run([str(BIN / "snakemake"), *targets, "--profile", "workflow/profiles/slurm",
                              "--slurm-status-command", "squeue",  # no slurmdbd here, so no sacct
                              "--slurm-init-seconds-before-status-checks", "1",
                              "--default-resources", f"slurm_partition={cluster['partition']}"],
                             cwd=ws, env={**engine_env(ws), **cluster["env"]}, capture_output=True, text=True)
        finished = completed_jobs(cluster["jobcomp"])
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", log))
    total = int(re.search(r"^total\s+(\d+)", log, re.M).group(1))
    assert len(submitted) == total  # every job, none run locally
    rules = set(re.findall(r"^rule (\w+):", log, re.M))
    assert rules == {"fetch", "prepare", "import_models", "base", "heads", "finetune", "exemplars", "features",
                     "reference", "merge"}, rules
    states = {j["JobId"]: j["JobState"] for j in finished}
    assert submitted <= set(states) and {states[j] for j in submitted} == {"COMPLETED"}, states
    here, local = _metrics(ws), _metrics(smk_ws)
    assert set(here) == {"zeroshot", "individual", "cat", "lot"} and all(here[m] == local[m] for m in here)


def test_snakemake_gives_the_same_metrics(dvc_ws, smk_ws):
    assert _metrics(smk_ws) == _metrics(dvc_ws)
    # the same bytes, not just the same rounded accuracies: a thread count that differs between the engines
    # shows up in the heads and experts long before it flips a test prediction
    for sub in ("models/base", "models/heads", "models/experts", "data/features", "models/merged"):
        files = sorted(p.relative_to(dvc_ws) for p in (dvc_ws / sub).rglob("*.safetensors"))
        assert files, sub
        for f in files:
            assert (dvc_ws / f).read_bytes() == (smk_ws / f).read_bytes(), f


def test_a_plain_snakemake_run_repairs_an_interrupted_forced_merge(smk_ws):
    """Ctrl-C while `snakemake -f` reruns CAT's merge (its outputs already deleted): the next plain run must
    merge CAT again, not report "nothing to be done" with the report listing a model that is gone."""
    import time

    metrics = smk_ws / "reports" / "metrics" / "cat.json"
    proc = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2", "-f", "models/merged/cat.safetensors"],
                            cwd=smk_ws, env=engine_env(smk_ws), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=as_in_a_terminal)
    deadline = time.monotonic() + 120
    while metrics.exists():  # Snakemake deletes a forced job's outputs when the job starts
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert not metrics.exists() and not (smk_ws / "models" / "merged" / "cat.safetensors").exists()
    assert {"mergeflow merge --method cat --evaluate", "mergeflow report"} <= set(snakemake_jobs(smk_ws))
    _run([str(BIN / "snakemake"), "--cores", "2"], smk_ws)
    assert metrics.is_file() and not snakemake_jobs(smk_ws)


def test_changing_cat_lambda_reruns_only_cat(dvc_ws, smk_ws):
    def change(p):
        p["merge"]["cat"]["lambda"] = 7.0

    _edit(smk_ws, change)
    jobs = snakemake_jobs(smk_ws)
    assert set(jobs) == {"mergeflow merge --method cat --evaluate", "mergeflow merge --method cat--c-1 --evaluate",
                         "mergeflow report"}, sorted(jobs)
    _edit(dvc_ws, change)
    assert _dvc_repro(dvc_ws) == {"merge-cat", "sweep_cat_c@1", "report"}


def test_an_expert_is_the_same_trained_alone_or_beside_others(dvc_ws, tmp_path):
    # `mergeflow finetune` trains the tasks in worker processes; `--task` trains one in this process
    for name in ("beside", "alone"):
        (tmp_path / name / "models").mkdir(parents=True)
        shutil.copy(dvc_ws / "params.yaml", tmp_path / name / "params.yaml")
        shutil.copytree(dvc_ws / "data" / "prepared", tmp_path / name / "data" / "prepared")
        for sub in ("base", "heads"):
            shutil.copytree(dvc_ws / "models" / sub, tmp_path / name / "models" / sub)
    _run([str(BIN / "mergeflow"), "finetune"], tmp_path / "beside")
    _run([str(BIN / "mergeflow"), "finetune", "--task", "digits"], tmp_path / "alone")
    expert = Path("models") / "experts" / "digits.safetensors"
    assert (tmp_path / "beside" / expert).read_bytes() == (tmp_path / "alone" / expert).read_bytes()
    assert (tmp_path / "beside" / "models" / "experts" / "shapes.safetensors").is_file()


def test_changing_cat_alpha_adds_cat_features(dvc_ws):
    _edit(dvc_ws, lambda p: p["merge"]["cat"].update(alpha=0.6))
    ran = _dvc_repro(dvc_ws)
    assert "merge-cat" in ran and "report" in ran
    assert any(s.startswith("features") for s in ran), ran
    assert not any(s.startswith(("finetune", "merge-lot", "merge-ties", "base", "heads")) for s in ran), ran
    assert (dvc_ws / "data" / "features" / "gram-a0.6-n2-s0").is_dir()


def test_cat_alpha_auto_builds_statistics_per_grid_value_and_picks_on_validation(dvc_ws):
    _edit(dvc_ws, lambda p: p["merge"]["cat"].update(alpha="auto"))
    ran = _dvc_repro(dvc_ws)
    assert {"merge-cat", "report"} <= ran and any(s.startswith("features") for s in ran), ran
    folder = dvc_ws / "data" / "features" / "gram-aauto-n2-s0"
    # grid [0, 0.3, 1.0]: scale 0 is the pre-trained model and needs no statistics
    assert sorted(p.name for p in folder.iterdir()) == [f"{t}.a{s}.safetensors" for t in ("digits", "shapes")
                                                        for s in (0.3, 1.0)]
    scale = json.loads((dvc_ws / "reports" / "merge" / "cat.json").read_text())["scale"]
    assert scale["chosen_by"] == "validation" and [p["scale"] for p in scale["grid"]] == [0.0, 0.3, 1.0]
    assert scale["value"] in (0.0, 0.3, 1.0) and scale["on_edge"] == (scale["value"] != 0.3)


def test_changing_finetune_reruns_experts_and_everything_after(dvc_ws):
    _edit(dvc_ws, lambda p: p["finetune"].update(steps=6))
    ran = _dvc_repro(dvc_ws)
    assert {"finetune", "reference", "merge-task_arithmetic", "merge-cat", "report"} <= ran
    assert not any(s.startswith(("fetch", "prepare", "base", "heads", "exemplars")) for s in ran), ran


@pytest.mark.parametrize("engine", ["dvc", "snakemake"])
def test_bad_params_stop_before_any_work(tmp_path, engine):
    ws = _workspace(tmp_path / engine)
    _edit(ws, lambda p: p["merge"]["methods"].append("foo"))
    if engine == "dvc":
        _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], ws)
        cmd = [str(BIN / "dvc"), "repro"]
    else:
        cmd = [str(BIN / "snakemake"), "--cores", "1"]
    out = subprocess.run(cmd, cwd=ws, env=engine_env(ws), capture_output=True, text=True)
    assert out.returncode != 0
    from mergeflow.merge import METHODS

    assert f"'foo': must be one of {', '.join(sorted(METHODS)[:3])}" in out.stdout + out.stderr  # the registry's
    assert not (ws / "data" / "raw").exists() or not any((ws / "data" / "raw").iterdir())


def test_missing_upstream_artifact_is_named(tmp_path):
    ws = _workspace(tmp_path)
    out = subprocess.run([str(BIN / "mergeflow"), "merge", "--method", "cat"], cwd=ws, env=engine_env(ws),
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "models/base" in out.stderr and "mergeflow base" in out.stderr


def test_features_with_a_mismatched_expert_leave_no_artifact(dvc_ws):
    expert = dvc_ws / "models" / "experts" / "digits.safetensors"
    saved = expert.read_bytes()
    from safetensors.torch import load_file, save_file

    log = dvc_ws / "models" / "experts" / "digits.log.json"
    saved_log = log.read_bytes()
    state = load_file(str(expert))
    state.pop("proj")
    save_file(state, str(expert))
    # the log records the new hash, as a finetune that wrote this expert would: the hash check passes and the
    # structural check against the base is what must refuse it
    import hashlib
    record = json.loads(saved_log)
    record["weights_sha256"] = hashlib.sha256(expert.read_bytes()).hexdigest()
    log.write_text(json.dumps(record))
    try:
        out = subprocess.run([str(BIN / "mergeflow"), "features", "--task", "digits", "--variant", "gram-a0.5-n2-s0"],
                             cwd=dvc_ws, env=engine_env(dvc_ws), capture_output=True, text=True)
    finally:
        expert.write_bytes(saved)
        log.write_bytes(saved_log)
    assert out.returncode == 2
    assert "digits.safetensors: does not match the base" in out.stderr and "proj" in out.stderr
    assert not (dvc_ws / "data" / "features" / "gram-a0.5-n2-s0" / "digits.safetensors").exists()


# --- the import route: task_vectors-format fakes in models/community/, merged by both engines -----------------
def _import_workspace(path: Path) -> Path:
    import community_fakes as fakes
    from mergeflow.data import get_task

    ws = _workspace(path)
    fakes.task_vectors_folder(ws / "models" / "community" / "tv",
                              {t: len(get_task(t).classnames) for t in ("digits", "shapes")}, "legacy")

    def imported(p):
        p["model"]["import"] = {"format": "task_vectors", "root": "models/community/tv"}
        # what the import route changes is upstream of the merges: two methods with statistics and the one
        # they are measured against are enough here (every method runs in the dvc_ws/smk_ws workspaces)
        p["merge"]["methods"] = ["task_arithmetic", "cat", "lot"]
        p["sweeps"] = {}
    _edit(ws, imported)
    _run([str(BIN / "mergeflow"), "dag"], ws)
    return ws


def test_both_engines_merge_imported_checkpoints_alike(tmp_path):
    import community_fakes as fakes

    dvc = _import_workspace(tmp_path / "dvc")
    smk = tmp_path / "smk"
    shutil.copytree(dvc, smk)
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], dvc)
    ran = _dvc_repro(dvc)
    assert {"import", "base", "heads", "finetune", "merge-cat", "merge-lot", "report"} <= ran
    _run([str(BIN / "snakemake"), "--cores", "2"], smk)
    assert _metrics(dvc) == _metrics(smk) and set(_metrics(dvc)) >= {"zeroshot", "individual", "cat", "lot"}
    for sub in ("models/base", "models/heads", "models/experts", "models/merged"):
        for f in sorted(p.relative_to(dvc) for p in (dvc / sub).rglob("*.safetensors")):
            assert (dvc / f).read_bytes() == (smk / f).read_bytes(), f
    log = json.loads((dvc / "models" / "experts" / "digits.log.json").read_text())
    assert log["imported"] == "models/imported/experts/digits.safetensors" and "steps" not in log
    # a replaced community checkpoint is a changed dependency of the import (`dvc status`: a rerun would
    # redo the whole pipeline)
    assert "up to date" in _run([str(BIN / "dvc"), "status"], dvc).lower()
    base = fakes.ImageEncoder(fakes.clip(0))
    fakes.save(fakes.perturb(base, seed=99), dvc / "models" / "community" / "tv" / "digits" / "finetuned.pt")
    status = _run([str(BIN / "dvc"), "status", "import"], dvc)
    assert "changed deps" in status and "models/community" in status


def test_merge_refuses_statistics_of_a_replaced_expert(dvc_ws):
    from safetensors.torch import load_file, save_file

    from mergeflow.io import hash_file

    expert, log = (dvc_ws / "models" / "experts" / f"digits.{ext}" for ext in ("safetensors", "log.json"))
    saved, saved_log = expert.read_bytes(), log.read_bytes()
    state = load_file(str(expert))
    state["proj"] = state["proj"] * 1.01  # same keys and shapes: only the recorded hash can tell
    save_file(state, str(expert))
    # a re-fine-tuned expert (its log records the new hash): the statistics made from the old one are stale
    log.write_text(json.dumps({**json.loads(saved_log), "weights_sha256": hash_file(expert)}))
    try:
        out = subprocess.run([str(BIN / "mergeflow"), "merge", "--method", "lot"], cwd=dvc_ws, env=engine_env(dvc_ws),
                             capture_output=True, text=True)
    finally:
        expert.write_bytes(saved)
        log.write_bytes(saved_log)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "stale, computed from another models/experts/digits.safetensors" in out.stderr
    assert "mergeflow features --variant gram-a1.0-n8-s0" in out.stderr


def _zeroed(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v * 0 for k, v in load_file(str(path)).items()}, str(path))


def _noisy_split(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state["images"] = state["images"].flip(0)  # same shape and values, other images: only the hash can tell
    save_file(state, str(path))


@pytest.mark.parametrize("artifact, damage, stage, words", [
    ("models/experts/shapes.safetensors", _zeroed, ["evaluate", "--model", "individual"],
     "rerun `mergeflow finetune --task shapes`"),
    ("models/merged/cat.safetensors", _zeroed, ["evaluate", "--model", "cat"], "rerun `mergeflow merge --method cat`"),
    ("models/merged/task_arithmetic.safetensors", _zeroed, ["merge", "--method", "surgery"],
     "rerun `mergeflow merge --method task_arithmetic`"),
    ("data/prepared/digits/test.safetensors", _noisy_split, ["evaluate", "--model", "zeroshot"],
     "rerun `mergeflow prepare --task digits`"),
    ("models/base/model.safetensors", _zeroed, ["evaluate", "--model", "zeroshot"], "rerun `mergeflow base`"),
])
def test_a_stage_run_directly_refuses_an_input_changed_since_it_was_recorded(dvc_ws, artifact, damage, stage, words):
    path = dvc_ws / artifact
    saved = path.read_bytes()
    damage(path)
    try:
        out = subprocess.run([str(BIN / "mergeflow"), *stage], cwd=dvc_ws, env=engine_env(dvc_ws),
                             capture_output=True, text=True)
    finally:
        path.write_bytes(saved)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-3000:]
    assert f"{artifact}: changed since it was written" in out.stderr and words in out.stderr, out.stderr


@pytest.mark.parametrize("file, text, words", [
    ("reports/metrics/cat.json", '{"accuracy": 3, "average": 0.5}', "key accuracy = '3' must be dict"),
    ("reports/merge/lot.json", '{"method": "lot"}', "key sweep missing"),
    ("reports/merge/lot.json", '[]', "must be a JSON object"),
    ("dvc.lock", "stages: [unclosed", "not a DVC lock file"),
])
def test_report_on_a_malformed_file_is_one_line_naming_it(dvc_ws, file, text, words):
    path = dvc_ws / file
    saved = path.read_bytes()
    path.write_text(text)
    try:
        out = subprocess.run([str(BIN / "mergeflow"), "report"], cwd=dvc_ws, env=engine_env(dvc_ws),
                             capture_output=True, text=True)
    finally:
        path.write_bytes(saved)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-3000:]
    assert file in out.stderr and words in out.stderr, out.stderr


# --- code as a dependency, and a method added from outside the package ------------------------------------
def test_editing_one_method_reruns_its_merges_only(dvc_ws, smk_ws):
    _run([str(BIN / "snakemake"), "--cores", "2"], smk_ws)  # what earlier tests changed but only dry-ran
    for ws in (dvc_ws, smk_ws):
        with (ws / "src" / "mergeflow" / "merge" / "lot.py").open("a") as f:
            f.write("\n# an edit: the code these merges executed is not the code there now\n")
    lot_runs = {"mergeflow merge --method lot --evaluate", "mergeflow merge --method lot--exemplars-4 --evaluate"}
    assert set(snakemake_jobs(smk_ws)) == lot_runs | {"mergeflow report"}
    _run([str(BIN / "snakemake"), "--cores", "2"], smk_ws)
    # the report follows only when a merge's outputs changed: a comment leaves the numbers, and may leave the
    # recorded wall time (in milliseconds), as they were, so DVC rightly skips it
    assert _dvc_repro(dvc_ws) - {"report"} == {"merge-lot", "sweep_lot_exemplars@4"}
    # a module the merge stage shares would rerun every merge, and nothing before it (`dvc status` says which)
    shared = dvc_ws / "src" / "mergeflow" / "scale_choice.py"
    text = shared.read_text()
    shared.write_text(text + "\n# an edit\n")
    try:
        status = _run([str(BIN / "dvc"), "status"], dvc_ws)
    finally:
        shared.write_text(text)
    changed = set(re.findall(r"^(\S+):\s*$", status, re.M))
    merges = {s for s in changed if s.startswith(("merge-", "sweep_"))}
    from mergeflow import config

    assert len(merges) == len(config.load(dvc_ws / "params.yaml").merge_runs()), changed
    assert changed - merges == set(), changed


PLUGIN = '''"""A throw-away merge method, registered from outside mergeflow through an entry point."""
from mergeflow.merge.registry import HParam, register


@register("halfway", "Halfway", "a test's throw-away method",
          {"alpha": HParam(0.5, float, "share of the mean task vector added", low=0.0, high=1.0)})
def halfway(pretrained, experts, stats=None, diagnostics=None, alpha=0.5):
    n = len(experts)
    return {k: v + alpha * sum(sd[k] - v for sd in experts.values()) / n if v.is_floating_point() else v
            for k, v in pretrained.items()}
'''


def _with_plugin(ws: Path) -> Path:
    """A package beside the workspace's code with one entry point of the group mergeflow.methods."""
    plugins = ws / "plugins"
    (plugins / "halfway_merge-0.1.dist-info").mkdir(parents=True)
    (plugins / "halfway_merge.py").write_text(PLUGIN)
    (plugins / "halfway_merge-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: halfway-merge\n"
                                                                       "Version: 0.1\n")
    (plugins / "halfway_merge-0.1.dist-info" / "entry_points.txt").write_text(
        "[mergeflow.methods]\nhalfway = halfway_merge\n")

    def add(p):
        p["merge"]["methods"].append("halfway")
        p["merge"]["halfway"] = {"alpha": 0.5}
    _edit(ws, add)
    return plugins


def test_a_method_registered_from_outside_runs_in_both_engines(dvc_ws, smk_ws, tmp_path):
    dvc, smk = tmp_path / "dvc", tmp_path / "smk"
    shutil.copytree(dvc_ws, dvc, symlinks=True)
    shutil.copytree(smk_ws, smk, symlinks=True)
    plugins = _with_plugin(dvc)
    _with_plugin(smk)
    # the committed dvc.yaml is now stale: a stage run by DVC says so instead of running on
    out = subprocess.run([str(BIN / "dvc"), "repro"], cwd=dvc, env=engine_env(dvc, plugins), capture_output=True,
                         text=True)
    assert out.returncode != 0 and "out of date with params.yaml" in out.stdout + out.stderr
    _run([str(BIN / "mergeflow"), "dag"], dvc, plugins)
    stage = yaml.safe_load((dvc / "dvc.yaml").read_text())["stages"]["merge-halfway"]
    assert "plugins/halfway_merge.py" in stage["deps"] and "src/mergeflow/merge/cat.py" not in stage["deps"]
    assert _dvc_repro(dvc, plugins) == {"merge-halfway", "report"}
    ran = _run([str(BIN / "snakemake"), "--cores", "2"], smk, smk / "plugins")
    assert set(re.findall(r"^(?:local)?rule (\w+):", ran, re.M)) - {"all"} == {"merge", "report"}, ran[-3000:]
    halfway = _metrics(dvc)["halfway"]
    assert halfway == _metrics(smk)["halfway"] and len(halfway) == 2
    assert "Halfway" in (dvc / "reports" / "report.html").read_text()
    # its module is one of its merge's dependencies: an edit reruns it and the report
    with (plugins / "halfway_merge.py").open("a") as f:
        f.write("\n# an edit\n")
    assert _dvc_repro(dvc, plugins) - {"report"} == {"merge-halfway"}  # the report: as above


@pytest.fixture(scope="module")
def suites_ws(dvc_ws, smk_ws, tmp_path_factory):
    """The finished tiny vision runs of both engines with the tiny text and generation suites added by a suites
    file: DVC from `mergeflow --params all-tiny.yaml dag`, Snakemake with `--configfile all-tiny.yaml`."""
    out = {}
    for engine, ws in (("dvc", dvc_ws), ("smk", smk_ws)):
        copy = tmp_path_factory.mktemp(f"suites-{engine}") / "ws"
        shutil.copytree(ws, copy, symlinks=True)
        for name in ("text-tiny.yaml", "lm-tiny.yaml", "all-tiny.yaml"):
            shutil.copy(TINY.parent / name, copy / name)
        if engine == "dvc":
            _run([str(BIN / "mergeflow"), "--params", "all-tiny.yaml", "dag"], copy)
            ran = _dvc_repro(copy)
        else:
            log = _run([str(BIN / "snakemake"), "--cores", "2", "--configfile", "all-tiny.yaml"], copy)
            ran = set(re.findall(r"^(?:local)?rule (\w+):", log, re.M)) - {"all"}
        out[engine] = (copy, ran)
    return out


def test_a_suites_file_adds_the_text_suites_beside_a_finished_vision_run(suites_ws):
    """Every vision stage stays as it was (nothing of the vision run reruns under either engine); the text and
    generation suites' stages and the method x suite report run."""
    (dvc, dvc_ran), (_, smk_ran) = suites_ws["dvc"], suites_ws["smk"]
    assert dvc_ran and all(s.startswith(("text-", "lm-")) for s in dvc_ran - {"suites-report"})
    assert "suites-report" in dvc_ran and "lm-merge-lot" in dvc_ran
    assert smk_ran and all(s.startswith(("text_", "lm_")) for s in smk_ran - {"suites_report"})
    assert "suites_report" in smk_ran and "lm_merge" in smk_ran
    table = (dvc / "reports" / "suites.csv").read_text().splitlines()
    assert table[0] == "method,vision,text,lm,vision_rank,text_rank,lm_rank"
    assert {row.split(",")[0] for row in table[1:]} >= {"task_arithmetic", "lot", "cat"}
    page = (dvc / "reports" / "suites.html").read_text()
    assert "Does a method's rank survive a change of modality?" in page
    assert "<h2>vision suite (params.yaml, tiny)</h2>" in page and "<h2>text suite (text-tiny.yaml" in page
    assert "<h2>lm suite (lm-tiny.yaml" in page


def test_both_engines_run_the_text_suites_to_the_same_bytes(suites_ws):
    (dvc, _), (smk, _) = suites_ws["dvc"], suites_ws["smk"]
    files = sorted(p.relative_to(dvc) for d in ("models/text", "data/text", "reports/text", "models/lm", "data/lm",
                                                "reports/lm")
                   for p in (dvc / d).rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.parent.name != "merge")  # merge reports hold wall times
    assert len(files) > 80 and any(f.parts[:2] == ("models", "lm") for f in files)
    different = [f for f in files if (dvc / f).read_bytes() != (smk / f).read_bytes()]
    assert not different, different
    # the suites table's text columns agree too; its vision columns come from each engine's own vision run,
    # which earlier tests edit differently (dvc_ws and smk_ws get other params before this fixture copies them)
    import pandas as pd

    tables = {ws: pd.read_csv(ws / "reports" / "suites.csv", index_col="method") for ws in (dvc, smk)}
    pd.testing.assert_frame_equal(tables[dvc][["text", "text_rank", "lm", "lm_rank"]].sort_index(),
                                  tables[smk][["text", "text_rank", "lm", "lm_rank"]].sort_index())
    for ws, frame in tables.items():
        for method, score in frame["vision"].dropna().items():
            metrics = json.loads((ws / "reports" / "metrics" / f"{method}.json").read_text())
            assert score == pytest.approx(100 * metrics["normalized"], abs=1e-4), (ws, method)


def test_the_text_report_scores_every_run_by_its_tasks_metric_and_checks_the_regime(suites_ws):
    import csv

    from mergeflow import config
    from mergeflow.io import load_tensors

    ws = suites_ws["dvc"][0]
    cfg = config.load(ws / "text-tiny.yaml")
    rows = {r["model"]: r for r in csv.DictReader((ws / "reports/text/results.csv").open())}
    assert set(rows) == set(cfg.models())
    metrics = json.loads((ws / "reports/text/metrics/lot.json").read_text())
    assert metrics["metric"] == {"sentiment": "accuracy", "paraphrase": "f1_accuracy", "similarity": "pearson_spearman"}
    assert float(rows["individual"]["normalized"]) == 100.0
    page = (ws / "reports/text/report.html").read_text()
    assert "The papers' regime" in page and "lot &gt; cat" in page and "every ||T_k|| / ||theta_pre||" in page
    # AdaMerging ran on the text suite; its entropy leaves the regression task out, and the report says so
    assert "adamerging, task similarity: prediction entropy is undefined for a regression output" in page
    merged = load_tensors(ws / "models/text/merged/lot.safetensors")  # the body only: each task keeps its head
    assert merged and not any(k.startswith("classifier.") for k in merged)


def test_the_lm_report_scores_answers_by_exact_match_and_names_each_methods_table_rule(suites_ws):
    import csv
    import html

    from mergeflow import config
    from mergeflow.io import load_tensors

    ws = suites_ws["dvc"][0]
    cfg = config.load(ws / "lm-tiny.yaml")
    rows = {r["model"]: r for r in csv.DictReader((ws / "reports/lm/results.csv").open())}
    assert set(rows) == set(cfg.models())
    metrics = json.loads((ws / "reports/lm/metrics/cat.json").read_text())
    assert metrics["metric"] == {"sorting": "exact_match", "polarity": "exact_match"}
    page = html.unescape((ws / "reports/lm/report.html").read_text())
    assert "The suite's regime" in page and "experts' mean exact match >= 80" in page
    assert "lot: both roles" in page and "cat: lookup role only" in page
    merged = load_tensors(ws / "models/lm/merged/lot.safetensors")  # the whole language model, its table once
    assert "model.embed_tokens.weight" in merged and "lm_head.weight" not in merged


def test_a_text_stage_run_from_a_suites_dag_checks_it_against_the_suites_file(suites_ws, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(suites_ws["dvc"][0], ws, symlinks=True)
    (ws / "all-tiny.yaml").write_text("name: all-tiny\nsuites: [params.yaml]\n")
    out = subprocess.run([str(BIN / "dvc"), "repro", "-f", "text-report"], cwd=ws, env=engine_env(ws),
                         capture_output=True, text=True)
    assert out.returncode != 0 and "does not list text-tiny.yaml" in out.stdout + out.stderr, out.stdout[-2000:]


def test_text_inputs_that_do_not_belong_together_are_one_line(suites_ws, tmp_path):
    """An expert whose vocabulary differs from the base's, a tokenizer larger than the model's vocabulary: one
    line naming both sizes, nothing written."""
    import torch

    from mergeflow.io import load_tensors, save_tensors

    ws = tmp_path / "ws"
    shutil.copytree(suites_ws["dvc"][0], ws, symlinks=True)
    expert = ws / "models/text/experts/sentiment.safetensors"
    state = load_tensors(expert)
    key = "roberta.embeddings.word_embeddings.weight"
    rows, width = state[key].shape
    state[key] = torch.cat([state[key], torch.zeros(3, width)])
    save_tensors(expert, state)
    before = (ws / "models/text/merged/task_arithmetic.safetensors").read_bytes()
    out = subprocess.run([str(BIN / "mergeflow"), "--params", "text-tiny.yaml", "merge", "--method", "task_arithmetic"],
                         cwd=ws, env=engine_env(ws), capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"mergeflow merge: error: expert 'sentiment': {key} has shape ({rows + 3}, {width}), pretrained "
        f"({rows}, {width})"], out.stderr
    assert (ws / "models/text/merged/task_arithmetic.safetensors").read_bytes() == before
    tokenizer = json.loads((ws / "models/text/base/tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for i in range(5):
        vocab[f"extra{i}"] = len(vocab)
    (ws / "models/text/base/tokenizer.json").write_text(json.dumps(tokenizer))
    out = subprocess.run([str(BIN / "mergeflow"), "--params", "text-tiny.yaml", "prepare"], cwd=ws,
                         env=engine_env(ws), capture_output=True, text=True)
    assert out.returncode == 2 and "tokens but the model's vocabulary has" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
