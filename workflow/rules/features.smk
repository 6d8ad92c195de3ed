rule exemplars:
    # one process for every task (sampling indices costs nothing next to a Python start-up)
    input:
        "data/prepared",
        code=CODE["exemplars"],
    output:
        directory("data/exemplars"),
    params:
        tasks=TASKS,
        exemplars=config["exemplars"],
    resources:
        **RESOURCES["exemplars"],
    log:
        "logs/exemplars.log",
    benchmark:
        "logs/benchmarks/exemplars.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} exemplars > {{log}} 2>&1"


rule features:
    input:
        "models/base",
        "models/experts",
        "models/heads",
        "data/exemplars",
        "data/prepared",
        code=CODE["features"],
    output:
        directory("data/features/{variant}"),
    wildcard_constraints:
        variant=one_of(VARIANTS),
    params:
        features=config["features"],
        grid=config["evaluate"]["scale_grid"],  # a variant at scale auto has one file per grid value
    threads: THREADS["features"]
    resources:
        **RESOURCES["features"],
    log:
        "logs/features/{variant}.log",
    benchmark:
        "logs/benchmarks/features/{variant}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} features --variant {{wildcards.variant:q}} > {{log}} 2>&1"
