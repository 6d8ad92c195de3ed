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


# Every product is a target, not only the report: Snakemake does not rerun a job whose outputs are present
# for an input that is missing (how temp() files work), so after an interrupted forced merge the report
# alone would count as up to date while that run's model and metrics were gone.
rule all:
    default_target: True
    input:
        "reports/report.html",
        expand("models/merged/{run}.safetensors", run=RUNS),
        expand("reports/metrics/{model}.json", model=CFG.models()),
        expand("reports/evaluation/{model}.json", model=CFG.models()),
