"""Both engines declare the same DAG: the same commands, each with the same outputs and inputs."""

from pathlib import Path

import pytest

from dag_tools import dvc_stage_params, dvc_stages, normal, snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dags():
    return dvc_stages(ROOT), snakemake_jobs(ROOT, "--forceall")


def _covered(path: str, by: set[str]) -> bool:
    """``path`` is one of ``by`` or inside one of them (DVC declares a directory where Snakemake lists files)."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)


def test_same_commands(dags):
    dvc, smk = dags
    assert set(dvc) == set(smk), (sorted(set(dvc) - set(smk)), sorted(set(smk) - set(dvc)))


def test_same_outputs(dags):
    dvc, smk = dags
    for cmd in dvc:
        assert dvc[cmd][1] == smk[cmd][1], cmd


def test_same_inputs(dags):
    dvc, smk = dags
    for cmd in dvc:
        dvc_in, smk_in = dvc[cmd][0], smk[cmd][0]
        # Snakemake cannot name a part of another rule's directory() output, so where DVC depends on
        # data/prepared/<task> Snakemake depends on data/prepared: a coarser input of the same stage
        assert all(_covered(p, dvc_in) or any(_covered(d, {p}) for d in dvc_in) for p in smk_in), (cmd, smk_in - dvc_in)
        assert all(any(_covered(s, {p}) or _covered(p, {s}) for s in smk_in) for p in dvc_in), (cmd, dvc_in - smk_in)


def test_merge_stages_read_only_their_own_params_block():
    params = dvc_stage_params(ROOT)
    for cmd, keys in params.items():
        if cmd.startswith("mergeflow merge --method "):
            run = cmd.split()[3]
            method = run.split("--")[0]
            own = {k for k in keys if k.startswith("merge.")}
            assert (own or "--" in run) and all(
                k == f"merge.{method}" or k.startswith((f"merge.{method}.", "sweeps.")) for k in own), (cmd, own)


def test_snakemake_lint_is_clean():
    import subprocess

    from dag_tools import BIN, engine_env

    out = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, env=engine_env(), capture_output=True, text=True)
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr, out.stdout + out.stderr


# --- dvc.yaml is generated (mergeflow dag) -----------------------------------------------------------------
def _mergeflow(*args, cwd=ROOT, env=None):
    import subprocess

    from dag_tools import BIN, engine_env

    return subprocess.run([str(BIN / "mergeflow"), *args], cwd=cwd, env={**engine_env(), **(env or {})},
                          capture_output=True, text=True)


def test_the_committed_dvc_yaml_is_what_the_generator_writes():
    out = _mergeflow("dag", "--check")
    assert out.returncode == 0, out.stderr


CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "tests" / "e2e" / "tiny.yaml"]


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_configuration_generates_a_dvc_yaml_with_all_its_runs(params, tmp_path):
    from mergeflow import config, dag
    from mergeflow.text.tasks import scored_here

    cfg = config.load(params)
    (tmp_path / "dvc.yaml").write_text(dag.render(cfg, ROOT))
    suites = cfg.configs if cfg.suite == "all" else [cfg]  # a suites file: each suite's file beside it
    for one in suites:
        target = tmp_path / ("params.yaml" if one is cfg else one.source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Path(one.source).read_text())
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        cmds = {normal(s.cmd) for s in repo.index.stages}
    expected_merges, expected_features = set(), set()
    for one in suites:
        mf = "mergeflow" if one is cfg or one.source == "params.yaml" else f"mergeflow --params {one.source}"
        scored = one.suite not in ("text", "lm") or scored_here(one.tasks)  # calibration tasks: scored outside
        expected_merges |= {f"{mf} merge --method {r.name}" + (" --evaluate" if scored else "")
                            for r in one.merge_runs()}
        expected_features |= {f"{mf} features --variant {v.name}" for v in one.variants()}
    assert expected_merges <= cmds and expected_features <= cmds
    assert not {c for c in cmds if " merge " in c} - expected_merges


def test_a_stale_dvc_yaml_is_refused_with_the_command_that_fixes_it(tmp_path):
    import shutil

    import yaml

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["merge"]["methods"].remove("emr")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _mergeflow("dag", "--check", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "out of date with params.yaml" in out.stderr and "`mergeflow --params params.yaml dag`" in out.stderr
    # a stage that DVC runs checks it before any work
    out = _mergeflow("exemplars", cwd=tmp_path, env={"DVC_STAGE": "exemplars"})
    assert out.returncode == 2 and "out of date" in out.stderr and not (tmp_path / "data").exists()
    out = _mergeflow("dag", cwd=tmp_path)
    assert out.returncode == 0
    # the package lies outside this folder: nothing to track, and the generator says so
    assert "no code dependencies written" in out.stderr and ".py" not in (tmp_path / "dvc.yaml").read_text()
    assert _mergeflow("dag", "--check", cwd=tmp_path).returncode == 0
    assert "merge-emr" not in (tmp_path / "dvc.yaml").read_text()


def test_a_method_module_is_a_dependency_of_its_own_merges_only():
    import yaml

    from mergeflow.dag import method_modules

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = method_modules()
    files = {module: "src/" + module.replace(".", "/") + ".py" for module in modules.values()}
    # DARE and AdaMerging++ run TIES' and task arithmetic's code: those are theirs too
    shared = {modules["ties"], modules["task_arithmetic"]}
    for name, stage in stages.items():
        deps = set(stage["deps"])
        mine = {module for module, f in files.items() if f in deps}
        if name.startswith(("merge-", "sweep_")):
            method = next(m for m in modules if name in (f"merge-{m}",) or name.startswith(f"sweep_{m}_"))
            assert modules[method] in mine and mine <= {modules[method], *shared}, (name, mine)
        else:
            assert not mine, (name, mine)
            assert "src/mergeflow/stages/merge.py" not in deps, name
    assert "src/mergeflow/report/templates" in stages["report"]["deps"]
    assert "src/mergeflow/stages/features.py" in stages["features"]["deps"]
    assert "src/mergeflow/stages/features.py" not in stages["fetch"]["deps"]


def test_the_params_schema_of_every_method_comes_from_the_registry():
    from mergeflow import config
    from mergeflow.merge import METHODS

    merge = config.schema()["properties"]["merge"]["properties"]
    assert set(merge) == {"methods", *METHODS}
    assert merge["methods"]["items"]["enum"] == sorted(METHODS)
    for name, spec in METHODS.items():
        assert set(merge[name]["properties"]) == set(spec.hparams), name
    assert merge["dare"]["properties"]["p"]["exclusiveMaximum"] == 1.0
    assert merge["cat"]["properties"]["alpha"]["oneOf"][1] == {"const": "auto"}
