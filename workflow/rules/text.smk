# The text suite (`suite: text`, mergeflow.stages.text): the same DAG as dvc.yaml's text-* stages, over the
# same commands, under data/text, models/text and reports/text (mergeflow.paths.TEXT). Its own globals (TEXT_*),
# so that a suites file runs it beside the vision rules.
TEXT_RAW = TEXT_CFG.raw
TEXT_MF = mergeflow_command(TEXT_CFG)
TEXT_TASKS = TEXT_CFG.tasks
TEXT_RUNS = {run.name: run for run in TEXT_CFG.merge_runs()}
TEXT_VARIANTS = [v.name for v in TEXT_CFG.variants()]
_TEXT_RES = mf_cluster.resources(TEXT_RAW["model"]["arch"], TEXT_RAW["device"])
TEXT_THREADS = {rule: _CORES or r["cpus"] for rule, r in _TEXT_RES.items()}
TEXT_RESOURCES = {rule: {k: v for k, v in r.items() if k != "cpus"} for rule, r in _TEXT_RES.items()}
TEXT_CODE = {stage: mf_dag.stage_code(stage, suite="text") for stage in ("fetch", "base", "prepare", "finetune",
                                                                          "exemplars", "features", "reference",
                                                                          "report")}
TEXT_GLUE = [t for t in TEXT_TASKS if mf_dag.text_task_kind(t) == "glue"]
TEXT_FETCHED = ([f"{TEXT_RAW['data']['raw_dir']}/{t}" for t in TEXT_GLUE] if TEXT_RAW["data"]["download"]
                else [TEXT_RAW["data"]["local_dir"]] if TEXT_GLUE else [])
_pretrained = TEXT_RAW["model"]["pretrained"]
# a Hugging Face folder is an input unless the base stage downloads it (data.download)
TEXT_BASE_READS = ([] if _pretrained in (None, "packaged") else
                   ([] if TEXT_RAW["data"]["download"] else [_pretrained]) if mf_dag.is_path_like(_pretrained)
                   else ["src/mergeflow/models/pretrained"])
TEXT_IMPORTED = [p.as_posix() for p in mf_dag.imported_folders(TEXT_CFG).values()]


TARGETS += [
    "reports/text/report.html",
    *expand("models/text/merged/{run}.safetensors", run=TEXT_RUNS),
    *expand("reports/text/metrics/{model}.json", model=TEXT_CFG.models()),
    *expand("reports/text/evaluation/{model}.json", model=TEXT_CFG.models()),
]


if TEXT_GLUE and TEXT_RAW["data"]["download"]:

    rule text_fetch:
        input:
            code=TEXT_CODE["fetch"],
        output:
            directory(expand("{raw}/{task}", raw=TEXT_RAW["data"]["raw_dir"], task=TEXT_GLUE)),
        params:
            tasks=TEXT_TASKS,
        log:
            "logs/text/fetch.log",
        benchmark:
            "logs/benchmarks/text/fetch.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            f"{TEXT_MF} fetch > {{log}} 2>&1"


rule text_base:
    input:
        TEXT_BASE_READS,
        code=TEXT_CODE["base"],
    output:
        directory("models/text/base"),
    params:
        model=TEXT_RAW["model"],
        pretrain=TEXT_RAW["pretrain"],
        seed=TEXT_RAW["seed"],
        max_length=TEXT_RAW["data"]["max_length"],
    threads: TEXT_THREADS["base"]
    resources:
        **TEXT_RESOURCES["base"],
    log:
        "logs/text/base.log",
    benchmark:
        "logs/benchmarks/text/base.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} base > {{log}} 2>&1"


rule text_prepare:
    input:
        "models/text/base",
        TEXT_FETCHED,
        code=TEXT_CODE["prepare"],
    output:
        directory("data/text/prepared"),
    params:
        data={k: v for k, v in TEXT_RAW["data"].items() if k not in ("raw_dir", "local_dir", "download")},
    threads: TEXT_THREADS["prepare"]
    resources:
        **TEXT_RESOURCES["prepare"],
    log:
        "logs/text/prepare.log",
    benchmark:
        "logs/benchmarks/text/prepare.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} prepare > {{log}} 2>&1"


rule text_finetune:
    input:
        "models/text/base",
        "data/text/prepared",
        TEXT_IMPORTED,
        code=TEXT_CODE["finetune"],
    output:
        directory("models/text/experts"),
    params:
        tasks=TEXT_TASKS,
        finetune=TEXT_RAW["finetune"],
        imported=TEXT_RAW["model"].get("import"),
        batch_size=TEXT_RAW["evaluate"]["batch_size"],
    threads: TEXT_THREADS["finetune"]
    resources:
        **TEXT_RESOURCES["finetune"],
    log:
        "logs/text/finetune.log",
    benchmark:
        "logs/benchmarks/text/finetune.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} finetune > {{log}} 2>&1"


rule text_exemplars:
    input:
        "data/text/prepared",
        code=TEXT_CODE["exemplars"],
    output:
        directory("data/text/exemplars"),
    params:
        exemplars=TEXT_RAW["exemplars"],
    resources:
        **TEXT_RESOURCES["exemplars"],
    log:
        "logs/text/exemplars.log",
    benchmark:
        "logs/benchmarks/text/exemplars.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} exemplars > {{log}} 2>&1"


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
        variant=one_of(TEXT_VARIANTS),
    params:
        features=TEXT_RAW["features"],
        grid=TEXT_RAW["evaluate"]["scale_grid"],
    threads: TEXT_THREADS["features"]
    resources:
        **TEXT_RESOURCES["features"],
    log:
        "logs/text/features/{variant}.log",
    benchmark:
        "logs/benchmarks/text/features/{variant}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} features --variant {{wildcards.variant:q}} > {{log}} 2>&1"


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
        batch_size=TEXT_RAW["evaluate"]["batch_size"],
    threads: TEXT_THREADS["reference"]
    resources:
        **TEXT_RESOURCES["reference"],
    log:
        "logs/text/reference.log",
    benchmark:
        "logs/benchmarks/text/reference.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} evaluate --model individual zeroshot > {{log}} 2>&1"


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
        run=one_of(TEXT_RUNS),
    params:
        hparams=text_run_params,
        evaluate=TEXT_RAW["evaluate"],
    threads: TEXT_THREADS["merge"]
    resources:
        **TEXT_RESOURCES["merge"],
    log:
        "logs/text/merge/{run}.log",
    benchmark:
        "logs/benchmarks/text/merge/{run}.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} merge --method {{wildcards.run:q}} --evaluate > {{log}} 2>&1"


rule text_report:
    input:
        expand("reports/text/metrics/{model}.json", model=TEXT_CFG.models()),
        expand("reports/text/merge/{run}.json", run=TEXT_RUNS),
        expand("reports/text/evaluation/{model}.json", model=TEXT_CFG.models()),
        "models/text/experts",
        code=TEXT_CODE["report"],
    output:
        "reports/text/report.html",
        "reports/text/results.csv",
    params:
        merge=TEXT_RAW["merge"],
        sweeps=TEXT_RAW["sweeps"],
    resources:
        **TEXT_RESOURCES["report"],
    log:
        "logs/text/report.log",
    benchmark:
        "logs/benchmarks/text/report.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"{TEXT_MF} report > {{log}} 2>&1"
