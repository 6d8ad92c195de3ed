rule report:
    input:
        expand("reports/metrics/{model}.json", model=CFG.models()),
        expand("reports/merge/{run}.json", run=RUNS),
        expand("reports/evaluation/{model}.json", model=CFG.models()),
        "data/prepared",
        code=CODE["report"],
    output:
        "reports/report.html",
        "reports/results.csv",
        directory("reports/figures"),
    params:
        merge=config["merge"],
        sweeps=config["sweeps"],
    resources:
        **RESOURCES["report"],
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} report > {{log}} 2>&1"
