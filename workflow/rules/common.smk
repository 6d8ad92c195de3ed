# Derived lists: tasks, merge runs and the statistics variants they need, from mergeflow's own config code
# so that the CLI, DVC and Snakemake agree on names.
from mergeflow import cluster as mf_cluster
from mergeflow import config as mf_config
from mergeflow import dag as mf_dag
from mergeflow import paths as mf_paths
from mergeflow.models import importer as mf_importer

import os
import re

# The run's configuration (PARAMS: params.yaml, or the file of `--configfile`): one suite's, or a suites file
# (mergeflow.suites) naming one configuration per suite. The vision rules read CFG and `config`; the text
# rules TEXT_SUITE_CFGS (text.smk: the text and lm suites). A suite whose file is not params.yaml runs `mergeflow --params <its file>`.
SUITES = mf_config.load(PARAMS) if "suites" in config else None
if SUITES is not None:
    VISION_CFG = SUITES.of("vision")
    TEXT_SUITE_CFGS = [c for c in SUITES.configs if c.suite in ("text", "lm")]
    if VISION_CFG is not None:
        config.clear()
        config.update(VISION_CFG.raw)
else:
    _one = mf_config.from_mapping(config, PARAMS)
    VISION_CFG, TEXT_SUITE_CFGS = (None, [_one]) if _one.suite in ("text", "lm") else (_one, [])


def mergeflow_command(cfg):
    """How the CLI is called for ``cfg``'s suite: with ``--params`` unless its file is params.yaml."""
    return "mergeflow" if os.path.normpath(cfg.source) == "params.yaml" else f"mergeflow --params {cfg.source}"


CFG = VISION_CFG or TEXT_SUITE_CFGS[0]
MF = mergeflow_command(CFG)
TASKS = CFG.tasks
RUNS = {run.name: run for run in CFG.merge_runs()}
VARIANTS = [v.name for v in CFG.variants()]
# the files an import reads (each one an input, so a replaced checkpoint reruns it); the default root when
# nothing is imported, as in dvc.yaml
# (the vision suite's import: a text suite's model.import is read by its text-finetune rule)
IMPORT_ROOT = ([str(p) for p in mf_importer.source_files(VISION_CFG)] if VISION_CFG else []) or [
    str(mf_paths.COMMUNITY)]

# configured paths that rules read and nothing writes (dataset copies read in place, a checkpoint file)
READS = mf_dag.read_only_inputs(CFG)

# What each rule asks a scheduler for (mergeflow.cluster, scaled by model.arch). On one machine every job
# gets all cores, one job at a time per stage as under DVC; a cluster executor has no total core count,
# so a job gets the table's CPUs. (The thread count inside a job follows its CPU affinity either way.)
try:
    _CORES = workflow.cores
except Exception:  # WorkflowError: "requires a total number of cores" under --executor slurm
    _CORES = None
_RESOURCES = mf_cluster.resources(CFG.raw["model"]["arch"], CFG.raw["device"])
THREADS = {rule: _CORES or r["cpus"] for rule, r in _RESOURCES.items()}
RESOURCES = {rule: {k: v for k, v in r.items() if k != "cpus"} for rule, r in _RESOURCES.items()}


def one_of(names):
    """A wildcard constraint matching exactly these names (run names hold dots)."""
    return "|".join(re.escape(n) for n in names) or "none"


def run_stats(wildcards):
    return CFG.run_inputs(RUNS[wildcards.run])


# the source files a job executes (mergeflow.dag, as in dvc.yaml), so that an edited module reruns it
CODE = {stage: mf_dag.stage_code(stage) for stage in mf_dag.STAGE_COMMANDS if stage != "merge"}


def run_code(wildcards):
    return mf_dag.stage_code("merge", ".", RUNS[wildcards.run].method)


def run_params(wildcards):
    return RUNS[wildcards.run].hparams
