rule import_models:
    # community checkpoints (model.import: task_vectors, tall_masks, hf) converted into our artifacts; only
    # a manifest when nothing is imported
    input:
        IMPORT_ROOT,
        code=CODE["import"],
    output:
        directory("models/imported"),
    params:
        model=config["model"],
        tasks=TASKS,
        seed=config["seed"],
    threads: THREADS["import_models"]
    resources:
        **RESOURCES["import_models"],
    log:
        "logs/import.log",
    benchmark:
        "logs/benchmarks/import.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} import > {{log}} 2>&1"


rule base:
    # pre-trained on its own generated corpus (not on the tasks: no data input), or loaded: an open_clip
    # tag, a checkpoint path or weights the project ships (model.pretrained: offline)
    input:
        "src/mergeflow/models/pretrained",
        "models/imported",
        READS["base"],
        code=CODE["base"],
    output:
        directory("models/base"),
    params:
        model=config["model"],
        pretrain=config["pretrain"],
        seed=config["seed"],
    threads: THREADS["base"]
    resources:
        **RESOURCES["base"],
    log:
        "logs/base.log",
    benchmark:
        "logs/benchmarks/base.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} base > {{log}} 2>&1"


rule heads:
    # one process for every task: a head costs milliseconds, open_clip's start-up seconds
    input:
        "models/base",
        "models/imported",
        "data/prepared",
        code=CODE["heads"],
    output:
        directory("models/heads"),
    params:
        tasks=TASKS,
    threads: THREADS["heads"]
    resources:
        **RESOURCES["heads"],
    log:
        "logs/heads.log",
    benchmark:
        "logs/benchmarks/heads.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} heads > {{log}} 2>&1"


rule finetune:
    # one job for every task: on CPU the command trains the experts side by side in worker processes
    # (one per core, one thread each), which beats both one job per task and threads within a job
    input:
        "models/base",
        "models/heads",
        "models/imported",
        "data/prepared",
        code=CODE["finetune"],
    output:
        directory("models/experts"),
    threads: THREADS["finetune"]
    resources:
        **RESOURCES["finetune"],
    params:
        finetune=config["finetune"],
        batch_size=config["evaluate"]["batch_size"],
        tasks=TASKS,
    log:
        "logs/finetune.log",
    benchmark:
        "logs/benchmarks/finetune.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} finetune > {{log}} 2>&1"


rule reference:
    # the zero-shot base and the individual experts, scored on every task's test split (one process)
    input:
        "models/base",
        "models/heads",
        "models/experts",
        "data/prepared",
        code=CODE["reference"],
    output:
        "reports/metrics/zeroshot.json",
        "reports/metrics/individual.json",
        "reports/evaluation/zeroshot.json",
        "reports/evaluation/individual.json",
    params:
        batch_size=config["evaluate"]["batch_size"],
    threads: THREADS["reference"]
    resources:
        **RESOURCES["reference"],
    log:
        "logs/evaluate/reference.log",
    benchmark:
        "logs/benchmarks/evaluate/reference.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{MF} evaluate --model zeroshot individual > {{log}} 2>&1"
