# The text suite (`suite: text`, mergeflow.stages.text): the same DAG as dvc.yaml's text-* stages, over the
# same commands, under data/text, models/text and reports/text (mergeflow.paths.TEXT).
TEXT_CODE = {stage: mf_dag.stage_code(stage, suite="text") for stage in ("fetch", "base", "prepare", "finetune",
                                                                          "exemplars", "features", "reference",
                                                                          "report")}
TEXT_GLUE = [t for t in TASKS if mf_dag.text_task_kind(t) == "glue"]
TEXT_RAW = ([f"{config['data']['raw_dir']}/{t}" for t in TEXT_GLUE] if config["data"]["download"]
            else [config["data"]["local_dir"]] if TEXT_GLUE else [])
TEXT_BASE_READS = (["src/mergeflow/models/pretrained"] if config["model"]["pretrained"] not in (None, "packaged") and
                   not mf_dag.is_path_like(config["model"]["pretrained"]) else
                   [config["model"]["pretrained"]] if config["model"]["pretrained"] not in (None, "packaged") else [])


def text_run_code(wildcards):
    return mf_dag.stage_code("merge", ".", RUNS[wildcards.run].method, suite="text")


def text_run_stats(wildcards):
    return [f"data/text/features/{v.name}" for v in RUNS[wildcards.run].variants]


TARGETS = [
    "reports/text/report.html",
    *expand("models/text/merged/{run}.safetensors", run=RUNS),
    *expand("reports/text/metrics/{model}.json", model=CFG.models()),
    *expand("reports/text/evaluation/{model}.json", model=CFG.models()),
]


if TEXT_GLUE and config["data"]["download"]:

    rule text_fetch:
        input:
            code=TEXT_CODE["fetch"],
        output:
            directory(expand("{raw}/{task}", raw=config["data"]["raw_dir"], task=TEXT_GLUE)),
        params:
            tasks=TASKS,
        log:
            "logs/text/fetch.log",
        benchmark:
            "logs/benchmarks/text/fetch.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "mergeflow fetch > {log} 2>&1"


rule text_base:
    input:
        TEXT_BASE_READS,
        code=TEXT_CODE["base"],
    output:
        directory("models/text/base"),
    params:
        model=config["model"],
        pretrain=config["pretrain"],
        seed=config["seed"],
        max_length=config["data"]["max_length"],
    threads: THREADS["base"]
    resources:
        **RESOURCES["base"],
    log:
        "logs/text/base.log",
    benchmark:
        "logs/benchmarks/text/base.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow base > {log} 2>&1"


rule text_prepare:
    input:
        "models/text/base",
        TEXT_RAW,
        code=TEXT_CODE["prepare"],
    output:
        directory("data/text/prepared"),
    params:
        data={k: v for k, v in config["data"].items() if k not in ("raw_dir", "local_dir", "download")},
    threads: THREADS["prepare"]
    resources:
        **RESOURCES["prepare"],
    log:
        "logs/text/prepare.log",
    benchmark:
        "logs/benchmarks/text/prepare.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow prepare > {log} 2>&1"


rule text_finetune:
    input:
        "models/text/base",
        "data/text/prepared",
        code=TEXT_CODE["finetune"],
    output:
        directory("models/text/experts"),
    params:
        tasks=TASKS,
        finetune=config["finetune"],
        batch_size=config["evaluate"]["batch_size"],
    threads: THREADS["finetune"]
    resources:
        **RESOURCES["finetune"],
    log:
        "logs/text/finetune.log",
    benchmark:
        "logs/benchmarks/text/finetune.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow finetune > {log} 2>&1"


rule text_exemplars:
    input:
        "data/text/prepared",
        code=TEXT_CODE["exemplars"],
    output:
        directory("data/text/exemplars"),
    params:
        exemplars=config["exemplars"],
    resources:
        **RESOURCES["exemplars"],
    log:
        "logs/text/exemplars.log",
    benchmark:
        "logs/benchmarks/text/exemplars.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow exemplars > {log} 2>&1"


rule text_features:
    input:
        "models/text/base",
        "models/text/experts",
        "data/text/exemplars",
        "data/text/prepared",
        code=TEXT_CODE["features"],
    output:
        directory("data/text/features/{variant}"),
    wildcard_constraints:
        variant=one_of(VARIANTS),
    params:
        features=config["features"],
        grid=config["evaluate"]["scale_grid"],
    threads: THREADS["features"]
    resources:
        **RESOURCES["features"],
    log:
        "logs/text/features/{variant}.log",
    benchmark:
        "logs/benchmarks/text/features/{variant}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow features --variant {wildcards.variant:q} > {log} 2>&1"


rule text_reference:
    input:
        "models/text/base",
        "models/text/experts",
        "data/text/prepared",
        code=TEXT_CODE["reference"],
    output:
        "reports/text/metrics/individual.json",
        "reports/text/metrics/zeroshot.json",
        "reports/text/evaluation/individual.json",
        "reports/text/evaluation/zeroshot.json",
    params:
        batch_size=config["evaluate"]["batch_size"],
    threads: THREADS["reference"]
    resources:
        **RESOURCES["reference"],
    log:
        "logs/text/reference.log",
    benchmark:
        "logs/benchmarks/text/reference.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow evaluate --model individual zeroshot > {log} 2>&1"


rule text_merge:
    input:
        "models/text/base",
        "models/text/experts",
        "data/text/prepared",
        "reports/text/metrics/individual.json",
        text_run_stats,
        code=text_run_code,
    output:
        "models/text/merged/{run}.safetensors",
        "reports/text/merge/{run}.json",
        "reports/text/metrics/{run}.json",
        "reports/text/evaluation/{run}.json",
    wildcard_constraints:
        run=one_of(RUNS),
    params:
        hparams=run_params,
        evaluate=config["evaluate"],
    threads: THREADS["merge"]
    resources:
        **RESOURCES["merge"],
    log:
        "logs/text/merge/{run}.log",
    benchmark:
        "logs/benchmarks/text/merge/{run}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow merge --method {wildcards.run:q} --evaluate > {log} 2>&1"


rule text_report:
    input:
        expand("reports/text/metrics/{model}.json", model=CFG.models()),
        expand("reports/text/merge/{run}.json", run=RUNS),
        expand("reports/text/evaluation/{model}.json", model=CFG.models()),
        "models/text/experts",
        code=TEXT_CODE["report"],
    output:
        "reports/text/report.html",
        "reports/text/results.csv",
    params:
        merge=config["merge"],
        sweeps=config["sweeps"],
    resources:
        **RESOURCES["report"],
    log:
        "logs/text/report.log",
    benchmark:
        "logs/benchmarks/text/report.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        "mergeflow report > {log} 2>&1"
