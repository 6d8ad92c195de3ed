# Derived lists: tasks, merge runs and the statistics variants they need, from mergeflow's own config code
# so that the CLI, DVC and Snakemake agree on names.
from mergeflow import config as mf_config

CFG = mf_config.from_mapping(config, "params.yaml")
TASKS = CFG.tasks
RUNS = {run.name: run for run in CFG.merge_runs()}
VARIANTS = [v.name for v in CFG.variants()]


def run_stats(wildcards):
    return [f"data/features/{v.name}" for v in RUNS[wildcards.run].variants]


def run_params(wildcards):
    return RUNS[wildcards.run].hparams
