# A suites file (mergeflow.suites): every suite's rules are included beside this one, the cross-suite report.
TARGETS += ["reports/suites.html", "reports/suites.csv"]


rule suites_report:
    input:
        [f"reports/{'' if c.suite == 'vision' else c.suite + '/'}metrics/{m}.json"
         for c in SUITES.configs for m in c.raw["merge"]["methods"]],
        code=mf_dag.stage_code("report", suite="all"),
    output:
        "reports/suites.html",
        "reports/suites.csv",
    log:
        "logs/suites-report.log",
    benchmark:
        "logs/benchmarks/suites-report.tsv"
    conda:
        "../envs/mergeflow.yaml"
    shell:
        f"mergeflow --params {SUITES.source} report > {{log}} 2>&1"
