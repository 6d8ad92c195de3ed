# The pipeline for `snakemake --cores all`: the same DAG as dvc.yaml, over the same `mergeflow` CLI.
from snakemake.utils import min_version, validate

min_version("8.0")

configfile: "params.yaml"


# common.smk first: its mergeflow.config.from_mapping() checks the params with one-line errors naming the
# key, the value and what is allowed (validate() would dump the whole schema), and what a schema cannot say.
include: "workflow/rules/common.smk"


validate(config, "workflow/schemas/params.schema.yaml")

# one suite per configuration (mergeflow.config): its rules, and its TARGETS
if CFG.suite == "text":

    include: "workflow/rules/text.smk"

else:

    include: "workflow/rules/vision.smk"


# Every product of the suite (TARGETS, from its rule file) is a target: see vision.smk.
rule all:
    default_target: True
    input:
        TARGETS,
