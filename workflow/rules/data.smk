rule fetch:
    output:
        directory("data/raw/{task}"),
    params:
        generate=config["data"]["generate"],
        download=config["data"]["download"],
    log:
        "logs/fetch/{task}.log",
    benchmark:
        "logs/benchmarks/fetch/{task}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow fetch --task {wildcards.task} > {log} 2>&1"


rule prepare:
    input:
        "data/raw/{task}",
    output:
        directory("data/prepared/{task}"),
    params:
        split=[config["data"]["val_fraction"], config["data"]["max_val"], config["data"]["split_seed"]],
        arch=config["model"]["arch"],
    log:
        "logs/prepare/{task}.log",
    benchmark:
        "logs/benchmarks/prepare/{task}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow prepare --task {wildcards.task} > {log} 2>&1"
