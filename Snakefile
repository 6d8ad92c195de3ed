# The pipeline for `snakemake --cores all`: the same DAG as dvc.yaml, over the same `mergeflow` CLI.
from snakemake.utils import min_version, validate

min_version("8.0")

configfile: "params.yaml"


# mergeflow's own check first: one line naming the key, the value and what is allowed (validate() below
# would dump the whole schema), plus what a schema cannot say (known tasks and methods, sweep values).
from mergeflow.config import from_mapping

from_mapping(config, "params.yaml")
validate(config, "workflow/schemas/params.schema.yaml")

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "reports/report.html",
