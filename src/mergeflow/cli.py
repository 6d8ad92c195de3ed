"""``mergeflow <stage>``: one subcommand per pipeline stage; DVC and Snakemake call only this.

User errors (:class:`MergeflowError`), failures of the machine (a full disk, a file-size limit, a file
that cannot be read: ``OSError``) and interrupts (Ctrl-C, ``SIGTERM`` from an engine) print one line and
exit 2 (130 for an interrupt); ``--verbose`` shows the traceback behind that line. Anything else is a bug
and keeps its traceback. Every output is renamed into place when complete, so an interrupted stage
leaves nothing that looks finished.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

STAGES = {
    "fetch": "put every task's (or one task's) raw data under data/raw/<task>/ (generate, download or check)",
    "prepare": "decode and resize every task's (or one's) train/val/test splits into data/prepared/<task>/",
    "pretrain": "pre-train model.arch by the pretrain block and write weights to ship (model.pretrained: <tag>)",
    "import": "convert the community checkpoints of model.import (task_vectors, tall_masks, hf) into models/imported/",
    "base": "pre-train (offline), load (real) or adopt (imported) the base CLIP; write models/base/",
    "heads": "build the zero-shot heads of every task (or one) from the text tower",
    "finetune": "fine-tune the image encoder on every task (or one): models/experts/<task>.safetensors",
    "exemplars": "sample seeded exemplar indices of every task (or one): data/exemplars/<task>.json",
    "features": "per-layer statistics of a task for a variant: data/features/<variant>/<task>.safetensors",
    "merge": "merge the experts with one configured run: models/merged/<run>.safetensors",
    "evaluate": "test accuracy of zeroshot, individual or a merged model: reports/metrics/<model>.json",
    "report": "tables, figures and reports/report.html from all metrics",
    "tasks-figure": "a grid of samples per task with class names: reports/figures/tasks.png",
    "dag": "write dvc.yaml for the params file and the method registry (--check: fail if it is out of date)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergeflow", description="Reproducible training-free model merging.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--verbose", action="store_true", help="show the traceback behind a one-line error")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        if name in ("fetch", "prepare", "heads", "finetune", "exemplars", "features"):
            # one command for all tasks: a process start costs seconds (torch, open_clip); finetune spreads
            # its tasks over worker processes
            p.add_argument("--task", default=None, help="one task (default: every task of data.tasks)")
        if name == "features":
            p.add_argument("--variant", required=True, help="<kind>-a<scale>-n<count>-s<seed>, e.g. gram-a0.4-n2-s0")
        if name == "pretrain":
            p.add_argument("--tag", default="offline", help="the name model.pretrained will load them by")
            p.add_argument("--out", default=None, help="folder (default: the package's shipped weights)")
            p.add_argument("--steps", type=int, default=None,
                           help="stop after this many steps of the schedule (checks that a run starts as recorded)")
        if name == "exemplars":
            p.add_argument("--seed", type=int, default=None, help="another exemplar seed than exemplars.seed")
        if name == "merge":
            p.add_argument("--method", required=True,
                           help="a method of merge.methods or a sweep run <method>--<param>-<value>")
            p.add_argument("--evaluate", action="store_true",
                           help="also write reports/metrics/<run>.json (saves a start-up)")
        if name == "dag":
            p.add_argument("--check", action="store_true", help="write nothing; exit 2 if dvc.yaml is out of date")
            p.add_argument("--out", default="dvc.yaml", help="where to write it (default: dvc.yaml)")
        if name == "evaluate":
            p.add_argument("--model", required=True, nargs="+",
                           help="zeroshot | individual | <merge run> (several: one process)")
    text = ("merge safetensors files a layer at a time (any size of model; no params file): "
            "--method M --base FILE --expert TASK=FILE ... --out FILE")
    p = sub.add_parser("merge-files", help=text, description=text)
    p.add_argument("--method", required=True,
                   help="a method whose rule is per unit (task_arithmetic, ties, lot, cat, ...)")
    p.add_argument("--base", required=True,
                   help="the pre-trained model: a safetensors file, a shard index or a Hugging Face folder")
    p.add_argument("--expert", required=True, action="append", metavar="TASK=FILE",
                   help="one per expert (a file, shard index or folder, as --base)")
    p.add_argument("--stats", action="append", default=[], metavar="TASK=FILE",
                   help="each task's statistics file, for the methods that need them")
    p.add_argument("--family", default="hf-decoder", help="the model family's adapter (default: hf-decoder)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyper-parameter (a YAML value: --set alpha=0.3 --set lambda=1.2)")
    p.add_argument("--block-mib", type=float, default=32.0, help="row blocks of a vocabulary table (MiB)")
    p.add_argument("--out", required=True,
                   help="the merged safetensors file (*.safetensors), or a new folder: model.safetensors beside the "
                        "base folder's configuration and tokenizer (written when complete)")
    text = ("a Hugging Face model's statistics on a text file, a few layers at a time (merge-files --stats): "
            "--model FOLDER --texts FILE --out FILE")
    p = sub.add_parser("stats-files", help=text, description=text)
    p.add_argument("--model", required=True, help="a folder: config.json, model.safetensors, tokenizer.json")
    p.add_argument("--texts", required=True, help="calibration texts, one example per line (UTF-8)")
    p.add_argument("--examples", type=int, default=64, help="the first N non-empty lines (default 64)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per example (default 512)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers-per-pass", type=int, default=4,
                   help="layers whose statistics are held at once; one forward pass over the texts each")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--weighting", default="tokens", choices=["tokens", "task"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="the statistics' safetensors file (written when complete)")
    return parser


def _pairs(items: list[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict; anything else is one line naming it."""
    from mergeflow.errors import MergeflowError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise MergeflowError(f"{what} {item!r}: expected NAME=VALUE")
        if name in out:
            raise MergeflowError(f"{what} {name!r} given twice")
        out[name] = value
    return out


def _merge_files(args: argparse.Namespace) -> None:
    import importlib

    import yaml

    # imported by name, as the stage modules are: mergeflow.dag counts every module cli.py imports as code
    # every stage depends on, and no stage runs this command
    stream = importlib.import_module("mergeflow.merge.stream")
    hp = {k: yaml.safe_load(v) for k, v in _pairs(args.set, "--set").items()}
    write = stream.merge_streamed if args.out.endswith(".safetensors") else stream.merge_to_folder
    report = write(args.method, args.base, _pairs(args.expert, "--expert"), args.out,
                   stats=_pairs(args.stats, "--stats") or None, family=args.family, block_mib=args.block_mib,
                   metadata={"method": args.method}, **hp)
    print(f"{args.out}: {args.method} of {len(args.expert)} experts, {report['groups']} groups "
          f"({report['row_blocks']} row blocks)")


def _stats_files(args: argparse.Namespace) -> None:
    import importlib

    calibration = importlib.import_module("mergeflow.features.calibration")  # by name: see _merge_files
    out = calibration.folder_statistics(args.model, args.texts, args.out, examples=args.examples,
                                        max_length=args.max_length, batch_size=args.batch_size,
                                        layers_per_pass=args.layers_per_pass, dtype=args.dtype,
                                        weighting=args.weighting, device=args.device)
    print(f"{out}: statistics of {args.model} on {args.examples} examples of {args.texts}")


def _tasks(args: argparse.Namespace, cfg) -> list[str]:
    """``--task`` when given, else every task of ``data.tasks`` (the all-task stages)."""
    return [args.task] if args.task else list(cfg.tasks)


def _each_task(fn):
    """A stage run once per task of ``--task`` or ``data.tasks``."""
    return lambda module, cfg, args: [fn(module, cfg, args, task) for task in _tasks(args, cfg)]


def _merge(module, cfg, args) -> None:
    module.merge(cfg, args.method)
    if args.evaluate:
        module.evaluate(cfg, args.method)


# stage → (the module it runs, what it runs given that module, the configuration and the parsed arguments).
# Only that module is imported: mergeflow.dag lists the modules a stage imports as its code dependencies.
HANDLERS = {
    "fetch": ("mergeflow.stages.data", lambda m, cfg, args: m.fetch_tasks(cfg, _tasks(args, cfg))),
    "prepare": ("mergeflow.stages.data", _each_task(lambda m, cfg, args, task: m.prepare(cfg, task))),
    "pretrain": ("mergeflow.stages.models",
                 lambda m, cfg, args: print(m.pretrain(cfg, args.tag, args.out, args.steps))),
    "import": ("mergeflow.stages.models", lambda m, cfg, args: m.import_models(cfg)),
    "base": ("mergeflow.stages.models", lambda m, cfg, args: m.base(cfg)),
    "heads": ("mergeflow.stages.models", _each_task(lambda m, cfg, args, task: m.heads(cfg, task))),
    "finetune": ("mergeflow.stages.models", lambda m, cfg, args: m.finetune_tasks(cfg, _tasks(args, cfg))),
    "exemplars": ("mergeflow.stages.data", _each_task(lambda m, cfg, args, task: m.exemplars(cfg, task, args.seed))),
    "features": ("mergeflow.stages.features",
                 _each_task(lambda m, cfg, args, task: m.features(cfg, task, args.variant))),
    "merge": ("mergeflow.stages.merge", _merge),
    "evaluate": ("mergeflow.stages.evaluate", lambda m, cfg, args: [m.evaluate(cfg, model) for model in args.model]),
    "report": ("mergeflow.report", lambda m, cfg, args: m.build_report(cfg)),
    "tasks-figure": ("mergeflow.report.figures", lambda m, cfg, args: m.tasks_figure(cfg)),
    "dag": ("mergeflow.dag", lambda m, cfg, args: m.command(cfg, args.out, args.check)),
}


# the text suite's stages (`suite: text`): the same commands, run by mergeflow.stages.text
_TEXT = "mergeflow.stages.text"
TEXT_HANDLERS = {
    "fetch": (_TEXT, lambda m, cfg, args: m.fetch(cfg, _tasks(args, cfg))),
    "prepare": (_TEXT, _each_task(lambda m, cfg, args, task: m.prepare(cfg, task))),
    "pretrain": (_TEXT, lambda m, cfg, args: print(m.pretrain(cfg, args.tag, args.out, args.steps))),
    "base": (_TEXT, lambda m, cfg, args: m.base(cfg)),
    "finetune": (_TEXT, lambda m, cfg, args: m.finetune_tasks(cfg, _tasks(args, cfg))),
    "exemplars": (_TEXT, _each_task(lambda m, cfg, args, task: m.exemplars(cfg, task, args.seed))),
    "features": (_TEXT, _each_task(lambda m, cfg, args, task: m.features(cfg, task, args.variant))),
    "merge": (_TEXT, _merge),
    "evaluate": (_TEXT, lambda m, cfg, args: [m.evaluate(cfg, model) for model in args.model]),
    "report": ("mergeflow.text.report", lambda m, cfg, args: m.build_text_report(cfg)),
    "dag": HANDLERS["dag"],
}


# a suites file (mergeflow.suites): the union DAG and the method × suite report
SUITES_HANDLERS = {
    "dag": HANDLERS["dag"],
    "report": ("mergeflow.report.suites", lambda m, cfg, args: m.build_suites_report(cfg)),
}


def handlers(suite: str) -> dict:
    """The stage table of a suite."""
    return TEXT_HANDLERS if suite in ("text", "lm") else HANDLERS


# stages that never touch a model: no device to check
NO_DEVICE = {"dag", "report", "tasks-figure"}


def _run(args: argparse.Namespace) -> None:
    import importlib

    from mergeflow import config

    if args.stage == "merge-files":  # files in, a file out: no configuration, no pipeline
        _merge_files(args)
        return
    if args.stage == "stats-files":
        _stats_files(args)
        return
    cfg = config.load(args.params)
    if cfg.suite == "all":  # a suites file: its DAG and its cross-suite report; each suite's stages read their own file
        if args.stage not in SUITES_HANDLERS:
            raise config.MergeflowError(f"{args.params} is a suites file: run `mergeflow --params <a suite's file> "
                                        f"{args.stage}` ({', '.join(c.source for c in cfg.configs)})")
        module, handler = SUITES_HANDLERS[args.stage]
        handler(importlib.import_module(module), cfg, args)
        return
    if getattr(args, "task", None) is not None and args.task not in cfg.tasks:
        if cfg.suite == "vision":
            from mergeflow.data import get_task

            get_task(args.task)  # unknown name: lists the known tasks
        raise config.MergeflowError(f"task {args.task!r} is not in data.tasks of {args.params}")
    if os.environ.get("DVC_STAGE") and args.stage != "dag":
        # run by DVC (in the folder of the dvc.yaml it read; a queued experiment's DVC_ROOT names another):
        # refuse to work from a dvc.yaml that params.yaml or the code no longer produce
        from mergeflow import dag

        dag.check(cfg, "dvc.yaml")
    if cfg.raw["device"] == "cuda" and args.stage not in NO_DEVICE and not os.environ.get("SLURM_JOB_ID"):
        # on one machine the first stage runs where every later one will: refuse before any work (a
        # cluster's CPU jobs run where no GPU is, so there each GPU stage checks when it starts)
        from mergeflow.device import resolve

        resolve("cuda")
    table = handlers(cfg.suite)
    if args.stage not in table:
        raise config.MergeflowError(f"`mergeflow {args.stage}` is a stage of the vision suite only; {args.params} "
                                    f"is a {cfg.suite} configuration")
    module, handler = table[args.stage]
    handler(importlib.import_module(module), cfg, args)


def _fix_threads() -> None:
    """One thread count for every stage process, whichever engine starts it.

    Float sums depend on how they are split over threads, and OpenMP reads ``OMP_NUM_THREADS`` once, when
    torch loads: Snakemake sets it to a job's ``threads``, DVC leaves it unset. Setting it here, before
    torch is imported, to the cores this process may use makes both engines write the same bytes.
    """
    from mergeflow.workers import cpu_cores

    if "torch" in sys.modules:  # called in a process that already loaded torch (the tests): too late for OpenMP
        sys.modules["torch"].set_num_threads(cpu_cores())
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cpu_cores())


def _os_error(exc: OSError) -> str:
    """An ``OSError`` as one line: what failed, on which file."""
    what = exc.strerror or str(exc) or type(exc).__name__
    files = [f for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' -> '.join(map(str, files))}: {what}" if files else what


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # an engine's stop (DVC, Snakemake, SLURM) ends the stage like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _fix_threads()
    from mergeflow.errors import MergeflowError

    if argv is None:  # a command, not a call from the tests
        signal.signal(signal.SIGTERM, _sigterm)
    try:
        _run(args)
    except MergeflowError as exc:
        if args.verbose:
            raise
        print(f"mergeflow {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"mergeflow {args.stage}: interrupted; no output of this stage was completed (rerun it)", file=sys.stderr)
        return 130
    except OSError as exc:
        if args.verbose:
            raise
        print(f"mergeflow {args.stage}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
