# The suites the text stages run (mergeflow.stages.text): `suite: text` (sequence classifiers on GLUE-shaped
# tasks) and `suite: lm` (causal language models answering generated prompts). The same DAG as dvc.yaml's
# text-* and lm-* stages, over the same commands, under data/<suite>, models/<suite> and reports/<suite>
# (mergeflow.paths.TEXT_LAYOUTS). One set of rules per suite of the run, named <suite>_<stage> (the `name:`
# directive): every value a rule reads is bound when the loop defines it, so the suites never share one. A
# `shell:` string is formatted when its job runs, after the loop has moved on: the command it runs is therefore
# a parameter (params.mf), bound with the rest.


def _suite_settings(cfg):
    """What the rules of ``cfg``'s suite read, bound now (input functions close over this dict)."""
    raw = cfg.raw
    res = mf_cluster.resources(raw["model"]["arch"], raw["device"])
    glue = [t for t in cfg.tasks if mf_dag.text_task_kind(t) == "glue"]
    local = not mf_dag.scored_here(cfg.tasks)  # calibration tasks: scored outside mergeflow, texts in local_dir
    pretrained = raw["model"]["pretrained"]
    return {
        "s": cfg.suite,
        "cfg": cfg,
        "raw": raw,
        "mf": mergeflow_command(cfg),
        "tasks": cfg.tasks,
        "runs": {run.name: run for run in cfg.merge_runs()},
        "variants": [v.name for v in cfg.variants()],
        "scored": not local,
        "models": cfg.models() if not local else [],
        # calibration tasks: merged models only, each scored by the user's own evaluation (e.g. MTEB)
        "evaluate_flag": " --evaluate" if not local else "",
        "threads": {rule: _CORES or r["cpus"] for rule, r in res.items()},
        "resources": {rule: {k: v for k, v in r.items() if k != "cpus"} for rule, r in res.items()},
        "code": {stage: mf_dag.stage_code(stage, suite=cfg.suite) for stage in (
            "fetch", "base", "prepare", "finetune", "exemplars", "features", "reference", "report")},
        "glue": glue,
        "fetched": ([f"{raw['data']['raw_dir']}/{t}" for t in glue] if raw["data"]["download"]
                    else [raw["data"]["local_dir"]] if glue or local else []),
        # a Hugging Face folder is an input unless the base stage downloads it (data.download)
        "base_reads": ([] if pretrained in (None, "packaged") else
                       ([] if raw["data"]["download"] else [pretrained]) if mf_dag.is_path_like(pretrained)
                       else ["src/mergeflow/models/pretrained"]),
        "imported": [p.as_posix() for p in mf_dag.imported_folders(cfg).values()],
    }


def _run_code(x):
    return lambda wildcards: mf_dag.stage_code("merge", ".", x["runs"][wildcards.run].method, suite=x["s"])


def _run_stats(x):
    return lambda wildcards: [f"data/{x['s']}/features/{v.name}" for v in x["runs"][wildcards.run].variants]


def _run_params(x):
    return lambda wildcards: x["runs"][wildcards.run].hparams


for X in [_suite_settings(c) for c in TEXT_SUITE_CFGS]:
    S, RAW = X["s"], X["raw"]
    TARGETS += [
        f"reports/{S}/report.html",
        *expand(f"models/{S}/merged/{{run}}.safetensors", run=X["runs"]),
        *expand(f"reports/{S}/metrics/{{model}}.json", model=X["models"]),
        *expand(f"reports/{S}/evaluation/{{model}}.json", model=X["models"]),
    ]

    if X["glue"] and RAW["data"]["download"]:

        rule:
            name:
                f"{S}_fetch"
            input:
                code=X["code"]["fetch"],
            output:
                directory(expand("{raw}/{task}", raw=RAW["data"]["raw_dir"], task=X["glue"])),
            params:
                mf=X["mf"],
                tasks=X["tasks"],
            log:
                f"logs/{S}/fetch.log",
            benchmark:
                f"logs/benchmarks/{S}/fetch.tsv"
            conda:
                "../envs/mergeflow.yaml"
            shell:
                "{params.mf} fetch > {log} 2>&1"

    rule:
        name:
            f"{S}_base"
        input:
            X["base_reads"],
            code=X["code"]["base"],
        output:
            directory(f"models/{S}/base"),
        params:
            mf=X["mf"],
            model=RAW["model"],
            pretrain=RAW["pretrain"],
            seed=RAW["seed"],
            max_length=RAW["data"]["max_length"],
        threads: X["threads"]["base"]
        resources:
            **X["resources"]["base"],
        log:
            f"logs/{S}/base.log",
        benchmark:
            f"logs/benchmarks/{S}/base.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} base > {log} 2>&1"

    rule:
        name:
            f"{S}_prepare"
        input:
            f"models/{S}/base",
            X["fetched"],
            code=X["code"]["prepare"],
        output:
            directory(f"data/{S}/prepared"),
        params:
            mf=X["mf"],
            data={k: v for k, v in RAW["data"].items() if k not in ("raw_dir", "local_dir", "download")},
        threads: X["threads"]["prepare"]
        resources:
            **X["resources"]["prepare"],
        log:
            f"logs/{S}/prepare.log",
        benchmark:
            f"logs/benchmarks/{S}/prepare.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} prepare > {log} 2>&1"

    rule:
        name:
            f"{S}_finetune"
        input:
            f"models/{S}/base",
            f"data/{S}/prepared",
            X["imported"],
            code=X["code"]["finetune"],
        output:
            directory(f"models/{S}/experts"),
        params:
            mf=X["mf"],
            tasks=X["tasks"],
            finetune=RAW["finetune"],
            imported=RAW["model"].get("import"),
            batch_size=RAW["evaluate"]["batch_size"],
        threads: X["threads"]["finetune"]
        resources:
            **X["resources"]["finetune"],
        log:
            f"logs/{S}/finetune.log",
        benchmark:
            f"logs/benchmarks/{S}/finetune.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} finetune > {log} 2>&1"

    rule:
        name:
            f"{S}_exemplars"
        input:
            f"data/{S}/prepared",
            code=X["code"]["exemplars"],
        output:
            directory(f"data/{S}/exemplars"),
        params:
            mf=X["mf"],
            exemplars=RAW["exemplars"],
        resources:
            **X["resources"]["exemplars"],
        log:
            f"logs/{S}/exemplars.log",
        benchmark:
            f"logs/benchmarks/{S}/exemplars.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} exemplars > {log} 2>&1"

    rule:
        name:
            f"{S}_features"
        input:
            f"models/{S}/base",
            f"models/{S}/experts",
            f"data/{S}/exemplars",
            f"data/{S}/prepared",
            code=X["code"]["features"],
        output:
            directory(f"data/{S}/features/{{variant}}"),
        wildcard_constraints:
            variant=one_of(X["variants"]),
        params:
            mf=X["mf"],
            features=RAW["features"],
            grid=RAW["evaluate"]["scale_grid"],
        threads: X["threads"]["features"]
        resources:
            **X["resources"]["features"],
        log:
            f"logs/{S}/features/{{variant}}.log",
        benchmark:
            f"logs/benchmarks/{S}/features/{{variant}}.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} features --variant {wildcards.variant:q} > {log} 2>&1"

    if X["scored"]:

        rule:
            name:
                f"{S}_reference"
            input:
                f"models/{S}/base",
                f"models/{S}/experts",
                f"data/{S}/prepared",
                code=X["code"]["reference"],
            output:
                f"reports/{S}/metrics/individual.json",
                f"reports/{S}/metrics/zeroshot.json",
                f"reports/{S}/evaluation/individual.json",
                f"reports/{S}/evaluation/zeroshot.json",
            params:
                mf=X["mf"],
                batch_size=RAW["evaluate"]["batch_size"],
            threads: X["threads"]["reference"]
            resources:
                **X["resources"]["reference"],
            log:
                f"logs/{S}/reference.log",
            benchmark:
                f"logs/benchmarks/{S}/reference.tsv"
            conda:
                "../envs/mergeflow.yaml"
            shell:
                "{params.mf} evaluate --model individual zeroshot > {log} 2>&1"

    rule:
        name:
            f"{S}_merge"
        input:
            f"models/{S}/base",
            f"models/{S}/experts",
            f"data/{S}/prepared",
            *([f"reports/{S}/metrics/individual.json"] if X["scored"] else []),
            _run_stats(X),
            code=_run_code(X),
        output:
            f"models/{S}/merged/{{run}}.safetensors",
            f"reports/{S}/merge/{{run}}.json",
            *([f"reports/{S}/metrics/{{run}}.json", f"reports/{S}/evaluation/{{run}}.json"] if X["scored"] else []),
        wildcard_constraints:
            run=one_of(X["runs"]),
        params:
            mf=X["mf"],
            hparams=_run_params(X),
            evaluate=RAW["evaluate"],
            evaluate_flag=X["evaluate_flag"],
        threads: X["threads"]["merge"]
        resources:
            **X["resources"]["merge"],
        log:
            f"logs/{S}/merge/{{run}}.log",
        benchmark:
            f"logs/benchmarks/{S}/merge/{{run}}.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} merge --method {wildcards.run:q}{params.evaluate_flag} > {log} 2>&1"

    rule:
        name:
            f"{S}_report"
        input:
            expand(f"reports/{S}/metrics/{{model}}.json", model=X["models"]),
            expand(f"reports/{S}/merge/{{run}}.json", run=X["runs"]),
            expand(f"reports/{S}/evaluation/{{model}}.json", model=X["models"]),
            f"models/{S}/experts",
            code=X["code"]["report"],
        output:
            f"reports/{S}/report.html",
            f"reports/{S}/results.csv",
        params:
            mf=X["mf"],
            merge=RAW["merge"],
            sweeps=RAW["sweeps"],
        resources:
            **X["resources"]["report"],
        log:
            f"logs/{S}/report.log",
        benchmark:
            f"logs/benchmarks/{S}/report.tsv"
        conda:
            "../envs/mergeflow.yaml"
        shell:
            "{params.mf} report > {log} 2>&1"
