rule fetch:
    # one process for every task: generating a task takes 1-5 s, importing torch 3.5 s
    output:
        directory("data/raw"),
    params:
        tasks=TASKS,
        raw_dir=config["data"]["raw_dir"],
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
        "data/raw",
    output:
        directory("data/prepared"),
    params:
        tasks=TASKS,
        split=[config["data"]["val_fraction"], config["data"]["max_val"], config["data"]["split_seed"]],
        arch=config["model"]["arch"],
    log:
        "logs/prepare.log",
    benchmark:
        "logs/benchmarks/prepare.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow prepare > {log} 2>&1"
