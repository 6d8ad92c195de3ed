"""Cluster resources per rule (mergeflow.cluster) and the SLURM profile's DAG, without a cluster."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dag_tools import BIN, engine_env
from mergeflow import cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch, size", [("mf-vit-small", "small"), ("mf-vit-tiny", "small"), ("ViT-B-32", "base"),
                                        ("ViT-B-16", "base"), ("ViT-L-14", "large"), ("ViT-H-14", "large"),
                                        ("ViT-bigG-14", "large"), ("RN50", "base")])
def test_size_class(arch, size):
    assert cluster.size_class(arch) == size


def test_gpus_go_to_the_rules_that_run_a_large_model_and_scale_with_it():
    small, base, large = (cluster.resources(a) for a in ("mf-vit-small", "ViT-B-32", "ViT-L-14"))
    assert set(small) == set(cluster.RULES) and not any(r["gpu"] for r in small.values())
    gpu_rules = {rule for rule, r in base.items() if r["gpu"]}
    assert gpu_rules == {"base", "heads", "finetune", "features", "reference", "merge"}
    for rule in cluster.RULES:
        assert small[rule]["mem_mb"] <= base[rule]["mem_mb"] <= large[rule]["mem_mb"]
        assert small[rule]["runtime"] <= base[rule]["runtime"] <= large[rule]["runtime"]
    assert not any(r["gpu"] for r in cluster.resources("ViT-B-32", device="cpu").values())


def test_the_slurm_profile_builds_the_dag_with_every_rules_resources(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    for name in ("Snakefile", "workflow", "src/mergeflow/models/pretrained", "models/community"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "tests" / "e2e" / "tiny.yaml", tmp_path / "params.yaml")
    out = subprocess.run([str(BIN / "snakemake"), "--profile", "workflow/profiles/slurm", "-n", "--forceall"],
                         cwd=tmp_path, env=engine_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    want = cluster.resources("mf-vit-small")
    blocks = [b for b in re.split(r"^rule ", out.stdout, flags=re.M)[1:] if not b.startswith("all:")]
    jobs = [(b.split(":", 1)[0], re.search(r"^\s+resources: (.*)$", b, re.M).group(1)) for b in blocks]
    assert {rule for rule, _ in jobs} == set(cluster.RULES)
    for rule, line in jobs:
        assert f"mem_mb={want[rule]['mem_mb']}" in line and f"runtime={want[rule]['runtime']}" in line, (rule, line)
