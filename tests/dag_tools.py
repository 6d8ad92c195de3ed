"""Read the DAG each engine would run, as {command: (inputs, outputs)}, for tests that compare them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin: mergeflow, dvc, snakemake


def engine_env(workspace: Path | None = None, *extra_paths: Path) -> dict[str, str]:
    """The environment of the engines' processes. A test workspace holds its own copy of src/ (its stages'
    code dependencies): PYTHONPATH makes the `mergeflow` it runs that copy, so an edit there is what runs."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1"}
    paths = [*(([workspace / "src"]) if workspace is not None and (workspace / "src" / "mergeflow").is_dir() else []),
             *extra_paths]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    return env


def as_in_a_terminal() -> None:
    """``preexec_fn`` of a process a test will Ctrl-C: the default SIGINT and SIGQUIT dispositions, as a shell
    gives a foreground job. A test run launched in the background (``nohup … &`` from a script) inherits them
    ignored, and a process that ignores SIGINT at start keeps ignoring it: the stage would never see the
    Ctrl-C and run to its end."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _strip_redirect(cmd: str) -> str:
    return normal(re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd.strip()))


def normal(cmd: str) -> str:
    """A command with its quoting normalised (DVC's commands quote every configured value, Snakemake's
    only those that need it): the same words give the same string."""
    return shlex.join(shlex.split(cmd))


def snakemake_jobs(root: Path, *extra: str) -> dict[str, tuple[set[str], set[str]]]:
    """The jobs of ``snakemake -n -p`` (add ``--forceall`` for the whole DAG): command → (inputs, outputs)."""
    out = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--cores", "1", *extra], cwd=root, env=engine_env(root),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    jobs, inputs, outputs = {}, set(), set()
    for line in out.stdout.splitlines():
        s = line.strip()
        if s.startswith("rule ") and s.endswith(":"):
            inputs, outputs = set(), set()
        elif s.startswith("input:"):
            inputs = {p.strip() for p in s[len("input:"):].split(",") if p.strip()}
        elif s.startswith("output:"):
            outputs = {p.strip() for p in s[len("output:"):].split(",") if p.strip()}
        elif s.startswith("Shell command:") or s.startswith("mergeflow "):
            cmd = _strip_redirect(s.removeprefix("Shell command:"))
            if cmd and cmd != "None":  # rule all has no command
                jobs[cmd] = (inputs, outputs)
    return jobs


def dvc_stages(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """Every stage of dvc.yaml: command → (path dependencies, outputs incl. metrics and plots)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {normal(stage.cmd): ({d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)},
                                    {o.def_path for o in stage.outs})
                for stage in repo.index.stages if stage.cmd}


def dvc_stage_params(root: Path) -> dict[str, set[str]]:
    """Every stage of dvc.yaml: command → the params keys it depends on."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {normal(stage.cmd): {k for d in stage.deps if isinstance(d, ParamsDependency) for k in d.params}
                for stage in repo.index.stages if stage.cmd}
