rule exemplars:
    input:
        "data/prepared/{task}",
    output:
        "data/exemplars/{task}.json",
    params:
        exemplars=config["exemplars"],
    log:
        "logs/exemplars/{task}.log",
    benchmark:
        "logs/benchmarks/exemplars/{task}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow exemplars --task {wildcards.task} > {log} 2>&1"


rule features:
    input:
        "models/base",
        expand("models/experts/{task}.safetensors", task=TASKS),
        "models/heads",
        expand("data/exemplars/{task}.json", task=TASKS),
        expand("data/prepared/{task}", task=TASKS),
    output:
        directory("data/features/{variant}"),
    wildcard_constraints:
        variant="|".join(VARIANTS) or "none",
    params:
        features=config["features"],
    log:
        "logs/features/{variant}.log",
    benchmark:
        "logs/benchmarks/features/{variant}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow features --variant {wildcards.variant} > {log} 2>&1"
