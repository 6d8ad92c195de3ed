# Derived lists: tasks, merge runs and the statistics variants they need, from mergeflow's own config code
# so that the CLI, DVC and Snakemake agree on names.
from mergeflow import config as mf_config
from mergeflow import paths as mf_paths
from mergeflow.models import importer as mf_importer

CFG = mf_config.from_mapping(config, "params.yaml")
TASKS = CFG.tasks
RUNS = {run.name: run for run in CFG.merge_runs()}
VARIANTS = [v.name for v in CFG.variants()]
# the files an import reads (each one an input, so a replaced checkpoint reruns it); the default root when
# nothing is imported, as in dvc.yaml
IMPORT_ROOT = [str(p) for p in mf_importer.source_files(CFG)] or [str(mf_paths.COMMUNITY)]


def run_stats(wildcards):
    return [f"data/features/{v.name}" for v in RUNS[wildcards.run].variants]


def run_params(wildcards):
    return RUNS[wildcards.run].hparams
