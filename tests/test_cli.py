import subprocess
import sys
from pathlib import Path

from mergeflow.cli import STAGES, main


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "mergeflow.cli", "--help"], capture_output=True, text=True).stdout
    stages = ("fetch", "prepare", "base", "heads", "finetune", "exemplars", "features", "merge", "evaluate", "report")
    for stage in stages:
        assert stage in out and stage in STAGES


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text(Path("params.yaml").read_text().replace("lambda: 5.0", "lambda: -5.0"))
    assert main(["--params", str(bad), "merge", "--method", "cat"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "merge.cat.lambda = -5.0: must be >= 0" in err
    assert main(["fetch", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_every_stage_has_a_handler():
    import importlib

    from mergeflow import cli

    assert set(cli.HANDLERS) == set(cli.STAGES)
    for module, handler in cli.HANDLERS.values():
        assert callable(handler) and importlib.import_module(module)
