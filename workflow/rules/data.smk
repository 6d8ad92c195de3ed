rule fetch:
    # one job for every task, which it spreads over worker processes (one per core): reserve the cores
    input:
        code=CODE["fetch"],
    output:
        directory(config["data"]["raw_dir"]),
    threads: THREADS["fetch"]
    resources:
        **RESOURCES["fetch"],
    params:
        tasks=TASKS,
        generate=config["data"]["generate"],
        download=config["data"]["download"],
    log:
        "logs/fetch.log",
    benchmark:
        "logs/benchmarks/fetch.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow fetch > {log} 2>&1"


rule prepare:
    input:
        config["data"]["raw_dir"],
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
        "mergeflow prepare > {log} 2>&1"
