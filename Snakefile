# The pipeline for `snakemake --cores all`: the same DAG as dvc.yaml, over the same `mergeflow` CLI.
import os

from snakemake.utils import min_version, validate

min_version("8.0")

configfile: "params.yaml"


# `snakemake --configfile F`: F alone is the run's configuration (Snakemake would merge it into params.yaml's)
# and every stage reads F (`mergeflow --params F`), as `mergeflow --params F dag` writes for DVC
if workflow.overwrite_configfiles:
    import yaml as _yaml

    PARAMS = os.path.relpath(workflow.overwrite_configfiles[-1])
    config.clear()
    config.update(_yaml.safe_load(open(PARAMS)))
else:
    PARAMS = "params.yaml"


# common.smk first: its mergeflow.config.from_mapping() checks the params with one-line errors naming the
# key, the value and what is allowed (validate() would dump the whole schema), and what a schema cannot say.
include: "workflow/rules/common.smk"


if SUITES is None:  # each suite of a suites file was checked when it was loaded
    validate(config, "workflow/schemas/params.schema.yaml")

# the rules of each suite in the run, and every product of each (TARGETS: see vision.smk)
TARGETS = []
if VISION_CFG is not None:

    include: "workflow/rules/vision.smk"


if TEXT_SUITE_CFGS:

    include: "workflow/rules/text.smk"


if SUITES is not None:

    include: "workflow/rules/suites.smk"


rule all:
    default_target: True
    input:
        TARGETS,
