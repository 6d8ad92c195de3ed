rule fetch:
    # one job for every task, which it spreads over worker processes (one per core): reserve the cores
    input:
        code=CODE["fetch"],
    output:
        # one folder per task, never raw_dir itself: Snakemake deletes a job's outputs before running it
        [directory(f"{config['data']['raw_dir']}/{task}") for task in TASKS],
    threads: THREADS["fetch"]
    resources:
        **RESOURCES["fetch"],
    params:
        tasks=TASKS,
        generate=config["data"]["generate"],
        download=config["data"]["download"],
        local_dir=config["data"].get("local_dir"),
    log:
        "logs/fetch.log",
    benchmark:
        "logs/benchmarks/fetch.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} fetch > {{log}} 2>&1"


rule prepare:
    input:
        [f"{config['data']['raw_dir']}/{task}" for task in TASKS],
        READS["prepare"],
        code=CODE["prepare"],
    output:
        directory("data/prepared"),
    params:
        tasks=TASKS,
        split=[config["data"]["val_fraction"], config["data"]["max_val"], config["data"]["split_seed"]],
        arch=config["model"]["arch"],
    resources:
        **RESOURCES["prepare"],
    log:
        "logs/prepare.log",
    benchmark:
        "logs/benchmarks/prepare.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} prepare > {{log}} 2>&1"
