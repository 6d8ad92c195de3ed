# The pipeline for `snakemake --cores all`: the same DAG as dvc.yaml, over the same `mergeflow` CLI.
from snakemake.utils import min_version, validate

min_version("8.0")

configfile: "params.yaml"


# common.smk first: its mergeflow.config.from_mapping() checks the params with one-line errors naming the
# key, the value and what is allowed (validate() would dump the whole schema), and what a schema cannot say.
include: "workflow/rules/common.smk"


validate(config, "workflow/schemas/params.schema.yaml")

include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "reports/report.html",
