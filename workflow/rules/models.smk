rule base:
    input:
        expand("data/prepared/{task}", task=TASKS),
    output:
        directory("models/base"),
    params:
        model=config["model"],
        pretrain=config["pretrain"],
        seed=config["seed"],
    log:
        "logs/base.log",
    benchmark:
        "logs/benchmarks/base.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow base > {log} 2>&1"


rule heads:
    input:
        "models/base",
        "data/prepared/{task}",
    output:
        "models/heads/{task}.safetensors",
    log:
        "logs/heads/{task}.log",
    benchmark:
        "logs/benchmarks/heads/{task}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow heads --task {wildcards.task} > {log} 2>&1"


rule finetune:
    input:
        "models/base",
        "models/heads/{task}.safetensors",
        "data/prepared/{task}",
    output:
        "models/experts/{task}.safetensors",
        "models/experts/{task}.log.json",
    params:
        finetune=config["finetune"],
        batch_size=config["evaluate"]["batch_size"],
    log:
        "logs/finetune/{task}.log",
    benchmark:
        "logs/benchmarks/finetune/{task}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow finetune --task {wildcards.task} > {log} 2>&1"


rule reference:
    input:
        "models/base",
        expand("models/heads/{task}.safetensors", task=TASKS),
        expand("models/experts/{task}.safetensors", task=TASKS),
        expand("data/prepared/{task}", task=TASKS),
    output:
        "reports/metrics/{ref}.json",
    wildcard_constraints:
        ref="zeroshot|individual",
    params:
        batch_size=config["evaluate"]["batch_size"],
    log:
        "logs/evaluate/{ref}.log",
    benchmark:
        "logs/benchmarks/evaluate/{ref}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow evaluate --model {wildcards.ref} > {log} 2>&1"
