# The vision suite (the default, `suite: vision`): open_clip image encoders on image tasks.
include: "data.smk"
include: "models.smk"
include: "features.smk"
include: "merge.smk"
include: "report.smk"


# Every product is a target, not only the report: Snakemake does not rerun a job whose outputs are present
# for an input that is missing (how temp() files work), so after an interrupted forced merge the report
# alone would count as up to date while that run's model and metrics were gone.
TARGETS += [
    "reports/report.html",
    *expand("models/merged/{run}.safetensors", run=RUNS),
    *expand("reports/metrics/{model}.json", model=CFG.models()),
    *expand("reports/evaluation/{model}.json", model=CFG.models()),
]
