"""Both engines declare the same DAG: the same commands, each with the same outputs and inputs."""

from pathlib import Path

import pytest

from dag_tools import dvc_stage_params, dvc_stages, snakemake_jobs

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
