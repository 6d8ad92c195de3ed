rule merge:
    input:
        "models/base",
        "models/heads",
        "models/experts",
        "data/prepared",
        "reports/metrics/individual.json",
        run_stats,
        code=run_code,
    output:
        "models/merged/{run}.safetensors",
        "reports/merge/{run}.json",
        "reports/metrics/{run}.json",
        "reports/evaluation/{run}.json",
    wildcard_constraints:
        run=one_of(RUNS),
    params:
        hparams=run_params,
        evaluate=config["evaluate"],
    threads: THREADS["merge"]
    resources:
        **RESOURCES["merge"],
    log:
        "logs/merge/{run}.log",
    benchmark:
        "logs/benchmarks/merge/{run}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} merge --method {{wildcards.run:q}} --evaluate > {{log}} 2>&1"
